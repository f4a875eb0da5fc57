"""Import path of flow-matching models registered before the package layout moved (<= 0.1.0).

MLflow pickles a pyfunc's python model by reference to its class, and models registered earlier
name ``thyroaug.generators.pyfunc.FMGeneratorModel``. This alias keeps them loadable; new code
imports ``thyroaug.generators.flow_matching.pyfunc``. Add nothing here.
"""

from thyroaug.generators.flow_matching.pyfunc import FMGeneratorModel

__all__ = ["FMGeneratorModel"]
