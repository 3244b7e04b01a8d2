"""The deploy tests scrape the same kind of stack the integration tests run."""

from tests.integration.conftest import stack

__all__ = ["stack"]
