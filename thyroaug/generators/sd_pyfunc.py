"""Import path of Stable Diffusion models registered before the package layout moved (<= 0.1.0).

MLflow pickles a pyfunc's python model by reference to its class, and models registered earlier
name ``thyroaug.generators.sd_pyfunc.SDGeneratorModel``. This alias keeps them loadable; new code
imports ``thyroaug.generators.stable_diffusion.pyfunc``. Add nothing here.
"""

from thyroaug.generators.stable_diffusion.pyfunc import SDGeneratorModel

__all__ = ["SDGeneratorModel"]
