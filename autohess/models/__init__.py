"""The model zoo: ready-made ``ah.Model`` constructors, each with a ``simulate``.

Every constructor checks its data (shapes, support) and returns an ``ah.Model`` whose
method ``model.simulate(key, params)`` draws a new data set of the same shape, for bootstrap and
simulation studies (it calls the model's ``simulate(key, params, data)`` with the model's data). The per-observation log-likelihoods are public too (``logistic_loglik`` ...), so they
can be reused inside custom models.
"""

from ._garch import garch11 as garch11
from ._garch import garch11_loglik as garch11_loglik
from ._garch import garch11_variance as garch11_variance
from ._glm import linear as linear
from ._glm import linear_loglik as linear_loglik
from ._glm import logistic as logistic
from ._glm import logistic_loglik as logistic_loglik
from ._glm import negative_binomial as negative_binomial
from ._glm import negative_binomial_loglik as negative_binomial_loglik
from ._glm import poisson as poisson
from ._glm import poisson_loglik as poisson_loglik
from ._mixed import mixed_linear as mixed_linear
from ._mixed import mixed_logistic as mixed_logistic
from ._mixed import mixed_negative_binomial as mixed_negative_binomial
from ._mixed import mixed_poisson as mixed_poisson
from ._mixed import mixed_zip as mixed_zip
from ._survival import weibull as weibull
from ._survival import weibull_loglik as weibull_loglik

__all__ = [
    "garch11",
    "garch11_loglik",
    "garch11_variance",
    "linear",
    "linear_loglik",
    "logistic",
    "logistic_loglik",
    "mixed_linear",
    "mixed_logistic",
    "mixed_negative_binomial",
    "mixed_poisson",
    "mixed_zip",
    "negative_binomial",
    "negative_binomial_loglik",
    "poisson",
    "poisson_loglik",
    "weibull",
    "weibull_loglik",
]
