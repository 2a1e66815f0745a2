"""nox sessions: `nox -s tests` runs the test suite, `nox -s lint` runs ruff."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """Install the package with its test extras and run pytest (arguments are passed to pytest)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and this file."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "super_recipes", "tests", "noxfile.py")
