"""HTML and pandas output (issue #14 part 3).

HTML: each ``_repr_html_`` is parsed (``html.parser``; tags must balance) and its text must
hold every token of the result's ``str()`` (labels, formatted numbers, notes, verdicts), so
the notebook view says what the text says; user text is escaped (a label ``x<1``).
Frames: index, columns and values against the result's own arrays (exact: the same numbers).
One small logistic fit, shared; bootstrap and simulation with 12 members each.
"""

import html.parser
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah

pd = pytest.importorskip("pandas")

_rng = np.random.default_rng(3)
N = 120
X = np.column_stack([np.ones(N), _rng.normal(size=N), _rng.normal(size=N)])
Y = (_rng.uniform(size=N) < 1.0 / (1.0 + np.exp(-(X @ np.array([0.2, 1.0, -0.6]))))).astype(float)
MODEL = ah.models.logistic(pd.DataFrame(X, columns=["const", "x<1", "a&b"]), Y)
RES = ah.fit(MODEL)


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br",):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def html_tokens(markup: str) -> set:
    p = _Collect()
    p.feed(markup)
    p.close()
    assert not p.stack, f"unclosed tags {p.stack}"
    return set(" ".join(p.text).split())


def assert_same_content(markup: str, text: str):
    """Every token of ``text`` (rules of dashes or '=' aside) is in the HTML's text."""
    want = {t for t in text.split() if set(t) - set("-=")}
    missing = want - html_tokens(markup)
    assert not missing, f"in str() but not in the HTML: {sorted(missing)[:10]}"


def test_fit_html_is_the_summary_escaped():
    markup = RES._repr_html_()
    assert_same_content(markup, RES.summary())
    assert "beta[x&lt;1]" in markup and "beta[a&amp;b]" in markup and "x<1" not in markup
    assert markup.count("<table") == 2  # header and coefficients


def test_diagnostics_html_lists_problems():
    # at the start (not optimised) the report has problems, each with what to do
    ev = ah.evaluate(MODEL, {"beta": jnp.array([0.0, 0.3, 0.0])}, warn=False)
    rep = ev.diagnostics
    assert rep.problems
    markup = rep._repr_html_()
    assert_same_content(markup, str(rep))
    assert markup.count("<li>") == len(rep.problems)
    assert_same_content(ev._repr_html_(), ev.summary())


def test_audit_html():
    H = np.asarray(RES.hessian.matrix)
    rep = ah.audit(MODEL, RES.params, {"doubled": 2.0 * H, "exact copy": H})
    assert_same_content(rep._repr_html_(), str(rep))


def test_test_results_html():
    R = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    for obj in (RES.wald_test(R), RES.wald_test(R, use_f=True), RES.t_test(R, [1.0, 0.0])):
        assert_same_content(obj._repr_html_(), str(obj))
    lr = ah.lr_test(ah.fit(ah.models.logistic(X[:, :2], Y)), RES)
    assert_same_content(lr._repr_html_(), str(lr))
    # closed form: LR = 2 (llf_full - llf_restricted)
    assert lr.statistic == pytest.approx(2 * (float(RES.llf) - lr.llf_restricted), rel=1e-12)


BOOT = ah.bootstrap(RES, n=12, key=0)


def test_bootstrap_html_and_frames():
    cmp = BOOT.compare()
    assert_same_content(cmp._repr_html_(), str(cmp))
    assert repr(BOOT).split("(")[0] in BOOT._repr_html_()
    frame = BOOT.to_frame()
    assert list(frame.columns) == list(RES.labels) + ["ok", "status"]
    assert frame.shape == (12, len(RES.labels) + 2) and frame.index.name == "replicate"
    assert np.array_equal(frame[list(RES.labels)].to_numpy(), np.asarray(BOOT.replicates))
    assert np.array_equal(frame["ok"].to_numpy(), BOOT.ok)
    assert list(frame["status"]) == BOOT.fits.status
    assert BOOT.replicates_frame().equals(frame)
    cf = cmp.to_frame()
    assert list(cf.index) == list(RES.labels)
    assert list(cf.columns) == ["estimate", "boot SE", "hessian SE", "robust SE", "boot bias"]
    assert np.array_equal(cf["boot SE"].to_numpy(), cmp.bootstrap_se)
    assert np.array_equal(cf["robust SE"].to_numpy(), cmp.wald_se["robust"])


def test_study_html_and_frame():
    study = ah.simulation_study(MODEL, RES.params, n=12, key=1)
    table = study.table()
    assert_same_content(table._repr_html_(), str(table))
    assert_same_content(study._repr_html_(), repr(study))
    frame = table.to_frame()
    assert list(frame.index) == list(RES.labels)
    assert list(frame.columns[:6]) == ["true", "mean", "bias", "bias mcse", "emp SD", "emp SD mcse"]
    for k in ("hessian", "robust"):
        assert np.array_equal(frame[f"cover {k}"].to_numpy(), table.coverage[k])
        assert np.array_equal(frame[f"SE {k} mcse"].to_numpy(), table.mean_se_mcse[k])
    assert np.array_equal(frame["true"].to_numpy(), table.truth)


def test_profile_html_and_frame():
    prof = ah.profile(RES, "beta[x<1]", n_grid=9)
    assert_same_content(prof._repr_html_(), str(prof))
    assert "beta[x&lt;1]" in prof._repr_html_()
    frame = prof.to_frame()
    assert list(frame.columns) == ["beta[x<1]", "llf", "lr", "signed_root", "status"]
    assert np.array_equal(frame["beta[x<1]"].to_numpy(), prof.values)
    assert np.array_equal(frame["lr"].to_numpy(), prof.lr)
    assert len(frame) == prof.values.size


def test_frames_without_pandas_name_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"BootstrapResult.to_frame\(\).*pip install pandas.*replicates"):
        BOOT.to_frame()
    with pytest.raises(ImportError, match="TTestResult.to_frame"):
        RES.t_test(np.array([0.0, 1.0, 0.0])).to_frame()


def test_import_autohess_imports_no_pandas_or_scipy():
    # the new modules (_html, _hypothesis_tests) are imported by autohess: still neither
    import subprocess

    code = "import sys, autohess; print('pandas' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

