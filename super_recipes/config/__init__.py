"""The recipe compiler: composing recipes with Hydra (:mod:`.compose`), the typed schemas of every key
(:mod:`.schema`, :mod:`.training_params`, :mod:`.top_level`), building what a recipe names
(:mod:`.instantiate`) and writing objects down (:mod:`.describe`)."""
