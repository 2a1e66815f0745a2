"""``python -m super_recipes.models``: the classification zoo table (see :mod:`super_recipes.models.zoo`)."""

from super_recipes.models.zoo import main

raise SystemExit(main())
