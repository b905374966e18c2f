"""The 27 NIST StRD nonlinear regression problems: a parser for the .dat files and the models.

Files live in ``tests/data/nist_strd/`` (see the README there). ``load(name)`` parses one file,
``MODELS[name]`` is its model ``f(b, x) -> predictions`` in ``jax.numpy``, with ``b`` the vector
``(b1, ..., bp)`` and ``x`` the predictor array (shape ``(n,)``; Nelson ``(n, 2)``). The formulas
are written exactly as in the files (same grouping and constants), only in ``jnp`` syntax.

Used by ``tests/test_nist.py`` and ``benchmarks/nist_table.py``; imports nothing from autohess.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import jax.numpy as jnp
import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "nist_strd"

# In the order of NIST's own listing (Lower, Average, Higher difficulty).
NAMES = (
    "Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b",
    "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c", "Misra1d",
    "Roszman1", "ENSO",
    "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Problem:
    """One parsed StRD file. Arrays are float64 numpy; ``b`` vectors are ``(p,)``."""

    name: str
    difficulty: str  # "Lower" | "Average" | "Higher"
    formula: str  # the model line(s) as printed in the file
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray  # certified estimates
    certified_sd: np.ndarray  # certified standard deviations
    rss: float  # certified residual sum of squares
    residual_sd: float  # certified residual standard deviation
    dof_in_file: int  # as printed (Rat43's 9 is a typo for 11; use ``dof``)
    y: np.ndarray  # the data column ``y`` as printed (Nelson: y, not log y)
    x: np.ndarray  # (n,), Nelson (n, 2)

    @property
    def n_params(self) -> int:
        return self.certified.shape[0]

    @property
    def n_obs(self) -> int:
        return self.y.shape[0]

    @property
    def dof(self) -> int:
        return self.n_obs - self.n_params

    @property
    def response(self) -> np.ndarray:
        """What the model predicts: ``log(y)`` for Nelson, ``y`` otherwise."""
        return np.log(self.y) if self.name == "Nelson" else self.y

    def start(self, which: int) -> np.ndarray:
        return {1: self.start1, 2: self.start2}[which]


_RANGE = r"{}\s+\(lines\s+(\d+)\s+to\s+(\d+)\)"
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _line_range(header: str, label: str) -> tuple[int, int]:
    m = re.search(_RANGE.format(label), header)
    if m is None:
        raise ValueError(f"no '{label} (lines a to b)' in the header")
    return int(m.group(1)), int(m.group(2))


def _value(lines: list[str], label: str) -> str:
    for line in lines:
        if line.strip().startswith(label):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no '{label}' line")


def load(name: str) -> Problem:
    """Parse ``tests/data/nist_strd/<name>.dat`` using the line ranges its header gives."""
    text = (DATA / f"{name}.dat").read_text(encoding="ascii")
    lines = text.splitlines()
    header = "\n".join(lines[:10])
    s_lo, s_hi = _line_range(header, "Starting Values")
    c_lo, c_hi = _line_range(header, "Certified Values")
    d_lo, d_hi = _line_range(header, "Data")

    # Parameter rows: "  b1 =   500   250   2.389E+02  2.707E+00" (line numbers are 1-based).
    rows = []
    for k, line in enumerate(lines[s_lo - 1 : s_hi], start=1):
        label, _, rest = line.partition("=")
        if label.strip() != f"b{k}":
            raise ValueError(f"{name}: line {s_lo + k - 1} is not parameter b{k}: {line!r}")
        fields = rest.split()
        if len(fields) != 4:
            raise ValueError(f"{name}: expected start1 start2 estimate sd in {line!r}")
        rows.append([float(v) for v in fields])
    params = np.array(rows, dtype=np.float64)

    certified_block = lines[c_lo - 1 : c_hi]
    rss = float(_value(certified_block, "Residual Sum of Squares"))
    residual_sd = float(_value(certified_block, "Residual Standard Deviation"))
    dof = int(_value(certified_block, "Degrees of Freedom"))
    n_obs = int(_value(certified_block, "Number of Observations"))

    table = np.array(
        [[float(v) for v in line.split()] for line in lines[d_lo - 1 : d_hi]], dtype=np.float64
    )
    if table.shape[0] != n_obs:
        raise ValueError(f"{name}: {table.shape[0]} data rows, file says {n_obs}")
    columns = lines[d_lo - 2].split()  # "Data:   y   x" / "Data:   y   x1   x2"
    if columns[0] != "Data:" or columns[1] != "y" or len(columns) - 1 != table.shape[1]:
        raise ValueError(f"{name}: unexpected data header {lines[d_lo - 2]!r}")

    difficulty = re.search(r"(Lower|Average|Higher) Level of Difficulty", text).group(1)
    # The formula: the non-blank lines after "Model: ... Class / N Parameters (...)" and before
    # the starting-values table (Roszman1's first one is its "pi = ..." definition).
    m_start = next(i for i, ln in enumerate(lines) if ln.startswith("Model:")) + 2
    formula = " ".join(ln.strip() for ln in lines[m_start : s_lo - 4] if ln.strip())

    return Problem(
        name=name,
        difficulty=difficulty,
        formula=formula,
        start1=params[:, 0],
        start2=params[:, 1],
        certified=params[:, 2],
        certified_sd=params[:, 3],
        rss=rss,
        residual_sd=residual_sd,
        dof_in_file=dof,
        y=table[:, 0],
        x=table[:, 1] if table.shape[1] == 2 else table[:, 1:],
    )


# ---------------------------------------------------------------------------------------------
# Models, transcribed from the files' "Model:" blocks (b[0] is b1).

# Roszman1's file: "pi = 3.141592653589793238462643383279E0"; in float64 that is math.pi.
ROSZMAN1_PI = 3.141592653589793238462643383279e0
assert ROSZMAN1_PI == math.pi


def misra1a(b, x):  # y = b1*(1-exp[-b2*x])
    return b[0] * (1 - jnp.exp(-b[1] * x))


def chwirut(b, x):  # y = exp[-b1*x]/(b2+b3*x)
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def lanczos(b, x):  # y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def gauss(b, x):  # y = b1*exp( -b2*x ) + b3*exp( -(x-b4)**2 / b5**2 ) + b6*exp( -(x-b7)**2 / b8**2 )
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def danwood(b, x):  # y = b1*x**b2
    return b[0] * x ** b[1]


def misra1b(b, x):  # y = b1 * (1-(1+b2*x/2)**(-2))
    return b[0] * (1 - (1 + b[1] * x / 2) ** (-2))


def kirby2(b, x):  # y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)
    return (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2)


def cubic_cubic(b, x):  # Hahn1, Thurber: y = (b1+b2*x+b3*x**2+b4*x**3) / (1+b5*x+b6*x**2+b7*x**3)
    return (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3) / (
        1 + b[4] * x + b[5] * x**2 + b[6] * x**3
    )


def nelson(b, x):  # log[y] = b1 - b2*x1 * exp[-b3*x2]; x = (x1, x2) columns
    x1, x2 = x[:, 0], x[:, 1]
    return b[0] - b[1] * x1 * jnp.exp(-b[2] * x2)


def mgh17(b, x):  # y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]
    return b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4])


def misra1c(b, x):  # y = b1 * (1-(1+2*b2*x)**(-.5))
    return b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5))


def misra1d(b, x):  # y = b1*b2*x*((1+b2*x)**(-1))
    return b[0] * b[1] * x * ((1 + b[1] * x) ** (-1))


def roszman1(b, x):  # y = b1 - b2*x - arctan[b3/(x-b4)]/pi
    return b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / ROSZMAN1_PI


def enso(b, x):
    # y = b1 + b2*cos( 2*pi*x/12 ) + b3*sin( 2*pi*x/12 )
    #        + b5*cos( 2*pi*x/b4 ) + b6*sin( 2*pi*x/b4 )
    #        + b8*cos( 2*pi*x/b7 ) + b9*sin( 2*pi*x/b7 )
    pi = jnp.pi
    return (
        b[0]
        + b[1] * jnp.cos(2 * pi * x / 12)
        + b[2] * jnp.sin(2 * pi * x / 12)
        + b[4] * jnp.cos(2 * pi * x / b[3])
        + b[5] * jnp.sin(2 * pi * x / b[3])
        + b[7] * jnp.cos(2 * pi * x / b[6])
        + b[8] * jnp.sin(2 * pi * x / b[6])
    )


def mgh09(b, x):  # y = b1*(x**2+x*b2) / (x**2+x*b3+b4)
    return b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3])


def boxbod(b, x):  # y = b1*(1-exp[-b2*x])
    return b[0] * (1 - jnp.exp(-b[1] * x))


def rat42(b, x):  # y = b1 / (1+exp[b2-b3*x])
    return b[0] / (1 + jnp.exp(b[1] - b[2] * x))


def mgh10(b, x):  # y = b1 * exp[b2/(x+b3)]
    return b[0] * jnp.exp(b[1] / (x + b[2]))


def eckerle4(b, x):  # y = (b1/b2) * exp[-0.5*((x-b3)/b2)**2]
    return (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2)


def rat43(b, x):  # y = b1 / ((1+exp[b2-b3*x])**(1/b4))
    return b[0] / ((1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]))


def bennett5(b, x):  # y = b1 * (b2+x)**(-1/b3)
    return b[0] * (b[1] + x) ** (-1 / b[2])


MODELS = {
    "Misra1a": misra1a,
    "Chwirut2": chwirut,
    "Chwirut1": chwirut,
    "Lanczos3": lanczos,
    "Gauss1": gauss,
    "Gauss2": gauss,
    "DanWood": danwood,
    "Misra1b": misra1b,
    "Kirby2": kirby2,
    "Hahn1": cubic_cubic,
    "Nelson": nelson,
    "MGH17": mgh17,
    "Lanczos1": lanczos,
    "Lanczos2": lanczos,
    "Gauss3": gauss,
    "Misra1c": misra1c,
    "Misra1d": misra1d,
    "Roszman1": roszman1,
    "ENSO": enso,
    "MGH09": mgh09,
    "Thurber": cubic_cubic,
    "BoxBOD": boxbod,
    "Rat42": rat42,
    "MGH10": mgh10,
    "Eckerle4": eckerle4,
    "Rat43": rat43,
    "Bennett5": bennett5,
}
assert set(MODELS) == set(NAMES)


def residual_for(name: str):
    """``residual_fn(params, data) -> data["y"] - f(params["b"], data["x"])`` for one problem."""
    f = MODELS[name]

    def residual_fn(params, data):
        return data["y"] - f(params["b"], data["x"])

    residual_fn.__name__ = f"nist_{name}_residual"
    return residual_fn


def data_for(problem: Problem) -> dict:
    """The ``data`` dict for ``ah.least_squares``: the response (log y for Nelson) and x."""
    return {"y": jnp.asarray(problem.response), "x": jnp.asarray(problem.x)}


def rss_at(problem: Problem, b) -> float:
    """Residual sum of squares at ``b`` in float64 (independent of autohess)."""
    b = jnp.asarray(b, dtype=jnp.float64)
    r = jnp.asarray(problem.response) - MODELS[problem.name](b, jnp.asarray(problem.x))
    return float(jnp.sum(r**2))


def canonical_order(name: str, b: np.ndarray) -> np.ndarray:
    """Index order that puts a solution in a canonical form.

    The Lanczos models are sums of three exponentials ``b1 exp(-b2 x) + b3 exp(-b4 x) +
    b5 exp(-b6 x)``: swapping two terms gives the same curve and RSS, so a solver may return the
    certified optimum with its terms relabelled. Ordering the (amplitude, rate) pairs by rate
    makes two such labellings compare equal. Other problems keep their order.
    """
    b = np.asarray(b, dtype=np.float64)
    if not name.startswith("Lanczos"):
        return np.arange(b.size)
    pairs = np.argsort(b[1::2])
    return np.concatenate([[2 * k, 2 * k + 1] for k in pairs])
