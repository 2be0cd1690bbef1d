"""One self-contained HTML page per run: plots, summary table, and every eval example, browsable.

Why one static file: it can be copied off a cluster, attached to an issue or opened from a laptop
with no server, no CDN and no network. PNGs are inlined as base64, CSS and JS are inline.

Model output is untrusted: every string from the results is HTML-escaped on the Python side and the
page's script only toggles ``hidden`` on elements and reads ``data-*`` attributes, never ``innerHTML``.
A Content-Security-Policy with a per-page nonce is a second line: a ``<script>`` that slipped into the
page without the nonce would not run. Filters live in the URL fragment
(``report.html#step=all&category=wrong_answer``), so a filtered view is a link.
"""

from __future__ import annotations

import base64
import html
import secrets
import time
from pathlib import Path

from hf_sft.grading.registry import CATEGORIES

CATEGORY_LABELS = {"correct": "correct", "wrong_answer": "wrong answer", "format_failure": "format failure"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:0 16px;color:#212121}
h1{font-size:22px;margin:18px 0 4px} h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#616161;font-size:13px} table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f5f5f5}
.plots{display:flex;flex-wrap:wrap;gap:10px}
.plots img{box-sizing:border-box;width:calc(50% - 5px);min-width:420px;border:1px solid #eee}
.plots img.wide{width:100%;max-width:1000px}
.controls{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:1;
display:flex;gap:14px;flex-wrap:wrap;align-items:center}
.ex{border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:6px 10px}
.ex header{display:flex;gap:10px;flex-wrap:wrap;font-size:12px;color:#424242;margin-bottom:4px}
.badge{border-radius:10px;padding:0 8px;color:#fff;font-weight:600}
.correct .badge{background:#2e7d32} .wrong_answer .badge{background:#f9a825;color:#212121}
.format_failure .badge{background:#c62828}
.cols{display:grid;grid-template-columns:1fr 1.6fr 0.5fr;gap:8px}
.cols h3{font-size:12px;margin:2px 0;color:#757575;text-transform:uppercase}
pre{white-space:pre-wrap;word-break:break-word;background:#fafafa;border:1px solid #eee;padding:6px;margin:0;
max-height:420px;overflow:auto;font-size:12.5px}
#count{font-weight:600} .empty{color:#757575;font-style:italic}
"""

_JS = """
(function () {
  var step = document.getElementById('f-step'), cat = document.getElementById('f-category'),
      fail = document.getElementById('f-failure'), q = document.getElementById('f-search'),
      graders = document.getElementById('f-graders'), subject = document.getElementById('f-subject'),
      count = document.getElementById('count'), items = document.querySelectorAll('.ex');
  function params() {
    var out = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (kv) {
      var i = kv.indexOf('=');
      if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }
  function choose(select, value) {
    for (var i = 0; i < select.options.length; i++) if (select.options[i].value === value) select.value = value;
  }
  function apply() {
    var shown = 0, text = q.value.toLowerCase();
    for (var i = 0; i < items.length; i++) {
      var d = items[i].dataset;
      var ok = (step.value === 'all' || d.step === step.value) &&
               (cat.value === 'all' || d.category === cat.value) &&
               (fail.value === 'all' || d.failure === fail.value) &&
               (!graders || graders.value === 'all' || d.disagree === '1') &&
               (!subject || subject.value === 'all' || d.subject === subject.value) &&
               (!text || items[i].textContent.toLowerCase().indexOf(text) >= 0);
      items[i].hidden = !ok;
      if (ok) shown++;
    }
    count.textContent = shown + ' of ' + items.length + ' examples shown';
    document.body.dataset.shown = String(shown);
  }
  function save() {
    var h = 'step=' + encodeURIComponent(step.value) + '&category=' + encodeURIComponent(cat.value) +
            '&failure=' + encodeURIComponent(fail.value) + (q.value ? '&q=' + encodeURIComponent(q.value) : '') +
            (graders ? '&graders=' + encodeURIComponent(graders.value) : '') +
            (subject ? '&subject=' + encodeURIComponent(subject.value) : '');
    history.replaceState(null, '', '#' + h);
    apply();
  }
  function load() {
    var p = params();
    if (p.step) choose(step, p.step);
    if (p.category) choose(cat, p.category);
    if (p.failure) choose(fail, p.failure);
    if (p.graders && graders) choose(graders, p.graders);
    if (p.subject && subject) choose(subject, p.subject);
    if (p.q !== undefined) q.value = p.q;
    apply();
  }
  [step, cat, fail, graders, subject].forEach(function (el) { if (el) el.addEventListener('change', save); });
  q.addEventListener('input', save);
  window.addEventListener('hashchange', load);
  load();
  document.body.dataset.ready = '1';
})();
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _is_wide(path: Path) -> bool:
    """Two-panel figures get a full row: width and height are big-endian at bytes 16-24 of a PNG."""
    head = Path(path).read_bytes()[:24]
    return int.from_bytes(head[16:20], "big") > 2 * int.from_bytes(head[20:24], "big")


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


SUMMARY_HTML_COLUMNS = [("step", "step"), ("accuracy", "accuracy"), ("accuracy_ci", "95% CI"),
                        ("format_accuracy", "format accuracy"), ("format_accuracy_ci", "format 95% CI"),
                        ("correct", "correct"), ("wrong_answer", "wrong answer"), ("format_failure", "format failure"),
                        ("response_length", "response length"), ("entropy", "entropy")]
OPTIONAL_HTML_COLUMNS = [("pass_at_k", "pass@k"), ("maj_at_k", "maj@k"),
                         ("grader_disagreements", "grader disagreements")]


def table_html(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{esc(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(k)))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table_html(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty">No evaluation has been written yet.</p>'
    optional = [c for c in OPTIONAL_HTML_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    return table_html(rows, SUMMARY_HTML_COLUMNS + optional)


def breakdown_html(breakdowns: dict[str, list[dict]]) -> str:
    """Last-eval tables by subject / level (rows from ``report.breakdown_rows``)."""
    parts = []
    for field, rows in breakdowns.items():
        columns = [(field, field), ("problems", "problems"), ("count", "graded samples"), ("accuracy", "accuracy"),
                   ("accuracy_ci", "95% CI"), ("format_accuracy", "format accuracy"),
                   ("format_accuracy_ci", "95% CI")]
        parts.append(f"<h2>By {esc(field)}</h2>{table_html(rows, columns)}")
    return "".join(parts)


def _example_html(step: int, record: dict) -> str:
    category = record.get("category") if record.get("category") in CATEGORIES else "format_failure"
    failure = record.get("failure_type") or ""
    rewards = record.get("rewards") or {}
    metrics = record.get("metrics") or {}
    grading = record.get("grading") or {}
    facts = [f"step {step}", f"#{record.get('index', '?')}",
             f"reward {_fmt(rewards.get('total_reward'), 1)} (format {_fmt(rewards.get('format_reward'), 1)})",
             f"{_fmt(metrics.get('response_length'))} tokens", f"entropy {_fmt(metrics.get('token_entropy'))}",
             f"finish: {record.get('finish_reason') or '–'}"]
    if grading.get("timed_out"):
        facts.append("grading timed out")
    alternate = grading.get("alternate")
    if record.get("grader_disagreement") and isinstance(alternate, dict):
        facts.append(f"graders disagree: {alternate.get('reward_fn')} gives {_fmt(alternate.get('reward'), 1)}")
    facts += [str(record[k]) for k in ("subject", "level") if record.get(k)]
    label = CATEGORY_LABELS[category] + (f" · {failure}" if failure else "")
    header = f'<span class="badge">{esc(label)}</span>' + "".join(f"<span>{esc(f)}</span>" for f in facts)
    panes = (("Problem", "problem"), ("Response", "response"), ("Ground truth", "ground_truth"))
    cols = "".join(f"<div><h3>{name}</h3><pre>{esc(record.get(key))}</pre></div>" for name, key in panes)
    disagree = "1" if record.get("grader_disagreement") else "0"
    return (f'<article class="ex {category}" data-step="{step}" data-category="{category}" '
            f'data-failure="{esc(failure)}" data-disagree="{disagree}" data-subject="{esc(record.get("subject"))}">'
            f'<header>{header}</header><div class="cols">{cols}</div></article>')


def _select(ident: str, label: str, options: list[tuple[str, str]], selected: str) -> str:
    opts = "".join(f'<option value="{esc(v)}"{" selected" if v == selected else ""}>{esc(t)}</option>'
                   for v, t in options)
    return f'<label>{esc(label)} <select id="{ident}">{opts}</select></label>'


def render_report(title: str, subtitle: str, table_rows: list[dict], plot_paths: list[Path],
                  records_by_step: dict[int, list[dict]], breakdowns: dict[str, list[dict]] | None = None,
                  note: str = "") -> str:
    """The whole page as a string."""
    nonce = secrets.token_urlsafe(16)
    steps = sorted(records_by_step)
    failures = sorted({r.get("failure_type") for rs in records_by_step.values() for r in rs if r.get("failure_type")})
    subjects = sorted({str(r["subject"]) for rs in records_by_step.values() for r in rs if r.get("subject")})
    controls = "".join([
        _select("f-step", "Step", [("all", "all steps")] + [(str(s), str(s)) for s in steps],
                str(steps[-1]) if steps else "all"),
        _select("f-category", "Category", [("all", "all")] + [(c, CATEGORY_LABELS[c]) for c in CATEGORIES], "all"),
        _select("f-failure", "Failure type", [("all", "all")] + [(f, f) for f in failures], "all"),
        _select("f-graders", "Graders", [("all", "all"), ("disagree", "disagree")], "all"),
        _select("f-subject", "Subject", [("all", "all")] + [(x, x) for x in subjects], "all") if subjects else "",
        '<label>Search <input id="f-search" type="search" placeholder="text in problem/response"></label>',
        '<span id="count"></span>',
    ])
    examples = "".join(_example_html(step, r) for step in steps for r in records_by_step[step])
    wide = ' class="wide"'
    plots = "".join(f'<img alt="{esc(p.stem)}"{wide if _is_wide(p) else ""} src="{png_data_uri(p)}">'
                    for p in plot_paths)
    csp = f"default-src 'none'; img-src data:; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style nonce="{nonce}">{_CSS}</style></head>
<body>
<h1>{esc(title)}</h1><p class="meta">{esc(subtitle)} · generated {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>
<h2>Summary</h2>{summary_table_html(table_rows)}{f'<p class="meta">{esc(note)}</p>' if note else ""}
{breakdown_html(breakdowns or {})}
<h2>Progress</h2><div class="plots">{plots or '<p class="empty">No plots yet.</p>'}</div>
<h2>Examples</h2><div class="controls">{controls}</div>
<div id="examples">{examples or '<p class="empty">No per-example logs yet.</p>'}</div>
<script nonce="{nonce}">{_JS}</script>
</body></html>
"""
