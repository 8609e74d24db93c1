"""The serving tests' tiny trained project and registry, for experiments that run through the real API."""

from tests.serving.conftest import project, registry_root  # noqa: F401  (fixtures)
