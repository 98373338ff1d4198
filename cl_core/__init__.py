"""Pure continual-learning code (torch and numpy): importance, methods, trainer, metrics, data, models.

Nothing here imports the web, queue or store layers; they build on this package.
"""

from cl_core.experience import Experience
from cl_core.importance import fisher_diagonal, mas_importance
from cl_core.naming import MethodSpec, parse_method_name

__all__ = ["Experience", "MethodSpec", "fisher_diagonal", "mas_importance", "parse_method_name"]
