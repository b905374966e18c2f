"""autohess: exact Hessians and standard errors you can trust for maximum likelihood in JAX.

Importing autohess turns on float64 in JAX (see ``autohess._config`` for every setting it
changes and why).
"""

from . import _config

_config.apply()

from . import models as models  # noqa: E402
from . import plot as plot  # noqa: E402  (matplotlib is imported only when a plot is drawn)
from ._batch import BatchResult as BatchResult  # noqa: E402
from ._batch import fit_batch as fit_batch  # noqa: E402
from ._bootstrap import BootstrapComparison as BootstrapComparison  # noqa: E402
from ._bootstrap import BootstrapResult as BootstrapResult  # noqa: E402
from ._bootstrap import BootstrapWarning as BootstrapWarning  # noqa: E402
from ._bootstrap import bootstrap as bootstrap  # noqa: E402
from ._distributed import NotGathered as NotGathered  # noqa: E402
from ._recurrence import linear_recurrence as linear_recurrence  # noqa: E402
from ._profile import ProfileResult as ProfileResult  # noqa: E402
from ._profile import profile as profile  # noqa: E402
from ._simulation import SimulationStudy as SimulationStudy  # noqa: E402
from ._simulation import StudyTable as StudyTable  # noqa: E402
from ._simulation import simulation_study as simulation_study  # noqa: E402
from ._derivatives import Hessian as Hessian  # noqa: E402
from ._derivatives import chunked_memory_bytes as chunked_memory_bytes  # noqa: E402
from ._derivatives import gradient as gradient  # noqa: E402
from ._derivatives import hessian as hessian  # noqa: E402
from ._derivatives import hvp as hvp  # noqa: E402
from ._derivatives import scores as scores  # noqa: E402
from ._audit import AuditReport as AuditReport  # noqa: E402
from ._audit import CandidateAudit as CandidateAudit  # noqa: E402
from ._audit import StepSweep as StepSweep  # noqa: E402
from ._audit import audit as audit  # noqa: E402
from ._audit import audit_scipy as audit_scipy  # noqa: E402
from ._audit import step_sweep as step_sweep  # noqa: E402
from ._finite_diff import FDHessian as FDHessian  # noqa: E402
from ._finite_diff import fd_hessian as fd_hessian  # noqa: E402
from ._delta import DeltaResult as DeltaResult  # noqa: E402
from ._fit import FitResult as FitResult  # noqa: E402
from ._report import InferenceWarning as InferenceWarning  # noqa: E402
from ._delta import delta_method as delta_method  # noqa: E402
from ._fit import evaluate as evaluate  # noqa: E402
from ._fit import fit as fit  # noqa: E402
from ._hypothesis_tests import LRTestResult as LRTestResult  # noqa: E402
from ._hypothesis_tests import ScoreTestResult as ScoreTestResult  # noqa: E402
from ._hypothesis_tests import TTestResult as TTestResult  # noqa: E402
from ._hypothesis_tests import WaldTestResult as WaldTestResult  # noqa: E402
from ._hypothesis_tests import lr_test as lr_test  # noqa: E402
from ._hypothesis_tests import score_test as score_test  # noqa: E402
from ._hypothesis_tests import t_test as t_test  # noqa: E402
from ._hypothesis_tests import wald_test as wald_test  # noqa: E402
from ._least_squares import LeastSquaresModel as LeastSquaresModel  # noqa: E402
from ._least_squares import least_squares as least_squares  # noqa: E402
from ._model import Model as Model  # noqa: E402
from ._random import Latent as Latent  # noqa: E402
from ._random import MultivariateNormal as MultivariateNormal  # noqa: E402
from ._random import Normal as Normal  # noqa: E402
from ._random import corr_cholesky as corr_cholesky  # noqa: E402
from ._report import DiagnosticReport as DiagnosticReport  # noqa: E402
from ._report import Problem as Problem  # noqa: E402
from ._solver import Status as Status  # noqa: E402
from ._transforms import Interval as Interval  # noqa: E402
from ._transforms import Positive as Positive  # noqa: E402
from ._transforms import Real as Real  # noqa: E402
from ._transforms import Transform as Transform  # noqa: E402
from ._validation import Float32Warning as Float32Warning  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "BatchResult",
    "fit_batch",
    "BootstrapComparison",
    "BootstrapResult",
    "BootstrapWarning",
    "bootstrap",
    "NotGathered",
    "ProfileResult",
    "profile",
    "linear_recurrence",
    "SimulationStudy",
    "StudyTable",
    "simulation_study",
    "CandidateAudit",
    "FDHessian",
    "StepSweep",
    "audit",
    "audit_scipy",
    "fd_hessian",
    "step_sweep",
    "DeltaResult",
    "DiagnosticReport",
    "FitResult",
    "InferenceWarning",
    "Problem",
    "Status",
    "delta_method",
    "evaluate",
    "fit",
    "Float32Warning",
    "LRTestResult",
    "ScoreTestResult",
    "TTestResult",
    "WaldTestResult",
    "lr_test",
    "score_test",
    "t_test",
    "wald_test",
    "LeastSquaresModel",
    "least_squares",
    "Hessian",
    "Interval",
    "Model",
    "Latent",
    "MultivariateNormal",
    "Normal",
    "corr_cholesky",
    "Positive",
    "Real",
    "Transform",
    "chunked_memory_bytes",
    "gradient",
    "hessian",
    "hvp",
    "models",
    "plot",
    "scores",
]
