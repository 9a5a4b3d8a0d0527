"""index.html in a real browser: headless Chromium renders the table and every image, sorts, and logs no JS error.

Without a ``chromium`` binary the browser tests are skipped and say how to install one; the checks on the
file itself (escaping, nothing loaded from elsewhere) run everywhere.
"""
import html
import json
import re
import shutil
import subprocess

import pytest

from fixtures import TINY_VIT, built_once, missing, run_fit, tiny_config, write_mnist, write_yaml
from evaluate.compare import compare
from plots import write_confusion

HOSTILE = '<script>document.documentElement.dataset.pwned = "yes"</script>'
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Two tiny real runs (a ViT: attention maps; a CNN: feature maps, a confusion matrix), a failed point,
    and hostile strings where a run's name and an error go."""
    return built_once(tmp_path_factory, "html-comparison", build_comparison)


def build_comparison(tmp):
    root = write_mnist(tmp / "fmnist", n_train=48, n_test=48)  # one step an epoch: the page needs runs, not learning
    dirs = []
    for name, model in (("vit", dict(TINY_VIT)), ("cnn", {"name": "simple_cnn"})):
        cfg = tiny_config(root, tmp / "runs", name=name, model=model, epochs=2, batch_size=48)
        dirs.append(run_fit(cfg, experiment=name)[0])
    results = json.loads((dirs[1] / "results.json").read_text())
    results["name"] = results["experiment"] = "cnn " + HOSTILE  # as if a sweep had named a point so
    (dirs[1] / "results.json").write_text(json.dumps(results))
    write_confusion([[3, 1], [0, 4]], ["a<b", "c&d"], dirs[1], "confusion_best", top1=87.5)
    failures = [{"name": "vit-depth=99", "status": "failed", "traceback": "Traceback ...",
                 "error": f"RuntimeError: <img src=x onerror=\"document.title='pwned'\"> {HOSTILE}"}]
    out = tmp / "cmp"
    compare(dirs, out, failures=failures, images=2, command="python main.py --cfg sweep.yaml")
    return out


def test_html_escapes_run_strings_and_loads_nothing_from_elsewhere(comparison):
    text = (comparison / "index.html").read_text()
    assert HOSTILE not in text and "<img src=x" not in text
    assert html.escape(HOSTILE) in text  # shown, as text
    assert "python main.py --cfg sweep.yaml" in text and "vit-depth=99" in text
    # Self-contained: every image is a data: URI, no stylesheet, script or font comes from a URL.
    # 3 curves, the trade-offs, attention, features (the CNN's stem beside a ViT's patchify), confusion
    assert re.findall(r'<img src="([^"]{0,5})', text) == ["data:"] * 7
    assert not re.search(r'(src|href)="(https?:)?//', text) and "@import" not in text and "url(" not in text
    assert "Confusion matrices" in text and "confusion matrix of its best.pt" in text
    assert text.count("<figcaption>") == 7
    assert not list(comparison.glob(".*tmp*"))  # written atomically: no temporary left behind


def chromium() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    missing("chromium", f"none found (looked for {', '.join(BROWSERS)})", "apt-get install chromium (Debian)")


def browse(url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--enable-logging=stderr", "--v=0", *args, url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Uncaught" not in p.stderr, p.stderr[-3000:]  # console errors, as Chromium logs them
    return p


def attribute(dom: str, tag: str, name: str) -> str:
    match = re.search(rf"<{tag}\b[^>]*\b{name}=\"([^\"]*)\"", dom)
    return match.group(1) if match else ""


def result_rows(dom: str) -> list[list[str]]:
    body = dom.split('id="results-table"', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows]


@pytest.mark.system
@pytest.mark.parametrize("sort, key, descending", [("best-val-acc", 6, False), ("-params", 3, True),
                                                   ("-experiment", 0, True)])
def test_page_renders_every_image_and_sorts_in_chromium(comparison, sort, key, descending):
    page = (comparison / "index.html").as_uri()
    dom = browse(f"{page}?sort={sort}", "--dump-dom").stdout
    assert attribute(dom, "html", "data-js-errors") == ""
    assert attribute(dom, "html", "data-pwned") == "" and "<title>pwned" not in dom  # injected markup stayed text
    assert attribute(dom, "body", "data-images-ok") == "7/7"  # every <img> decoded, none broken
    assert attribute(dom, "body", "data-sorted") == f"{sort.lstrip('-')}:{'desc' if descending else 'asc'}"
    rows = result_rows(dom)
    assert sorted(r[0] for r in rows) == sorted(["vit", "cnn " + HOSTILE])
    head = re.search(r'<th[^>]*data-key="' + sort.lstrip("-") + r'"[^>]*>', dom).group(0)
    assert f'aria-sort="{"descending" if descending else "ascending"}"' in head  # the visible indicator's state
    values = [r[key] for r in rows]
    if key == 0:
        expected = sorted(values, key=str.lower, reverse=descending)
    else:  # numbers: "1.23 ± 0.40" and "0.43 M" sort by their leading number
        expected = sorted(values, key=lambda v: float(v.split()[0].replace(",", "")), reverse=descending)
    assert values == expected


@pytest.mark.system
def test_screenshot_at_laptop_width(comparison, tmp_path):
    shot = tmp_path / "screenshot.png"  # not into the comparison other tests read
    browse((comparison / "index.html").as_uri(), f"--screenshot={shot}", "--window-size=1400,3000",
           "--hide-scrollbars")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        colours = im.convert("L").resize((70, 150)).getcolors(256 * 256)
    assert colours and len(colours) > 20  # not a blank page


def synthetic_sweep(root):
    """The run files of a 4-model x 3-seed sweep with a second swept key (no training: what the page reads),
    and a latency.json whose every latency is flagged with the longest reasons: the widest results table a
    size sweep makes."""
    from models.measure import Latency

    models = [("simple_cnn", 4.2e5, 1.1e8), ("cnn_tr_small", 1.3e6, 4.3e8), ("cnn_tr_medium", 2.1e6, 6.8e8),
              ("cnn_tr_large", 3.4e6, 9.9e8)]
    labels = [f"sizes-fashion_mnist-{model}-train.label_smoothing=0.1" for model, _, _ in models]
    for i, (model, params, flops) in enumerate(models):
        for seed in range(3):
            d = root / "runs" / f"{labels[i]}-seed={seed}"
            d.mkdir(parents=True)
            write_yaml(d / "config.yaml", {"name": d.name, "seed": seed, "model": {"name": model},
                                           "data": {"name": "fashion_mnist"}, "train": {"label_smoothing": 0.1}})
            acc, times = [80.0 + i, 85.0 + seed, 88.0 + i / 2 + seed / 5], [31.5 + i + seed, 30.2 + i, 29.9 + seed]
            (d / "metrics.jsonl").write_text("".join(json.dumps(
                {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_acc": a, "epoch_time_s": t}) + "\n"
                for e, (a, t) in enumerate(zip(acc, times), 1)))
            (d / "results.json").write_text(json.dumps({
                "name": d.name, "status": "completed", "experiment": labels[i], "point": 3 * i + seed,
                "swept": {"model.name": model, "train.label_smoothing": 0.1, "seed": seed}, "params": params,
                "flops_inference": flops / 3, "flops_training": flops, "best_val_acc": max(acc),
                "final_val_acc": acc[-1], "time_per_epoch_s": sum(times) / 3}))
    out = root / "cmp"
    out.mkdir()
    latency = {label: {which: Latency(
        ms=12.3456 * (1 + i / 3), p25_ms=10.0, p75_ms=15.0, spread=0.384, repeats=550, threads=1, batch=batch,
        flagged=True, why="spread 38% > 10%; 3 samples < 7 (budget spent)", reference=labels[0], ratio=1 + i / 3,
        ratio_ci=0.153, ratio_flagged=i > 0, ratio_why="interval ±15% > ±3% over 550 rounds" if i else "").to_dict()
        for which, batch in (("batch1", 1), ("batched", 64))} for i, label in enumerate(labels)}
    (out / "latency.json").write_text(json.dumps({"experiments": latency}))
    return root / "runs", out


@pytest.mark.system
def test_the_page_fits_a_1400_px_window(tmp_path):
    """Issue 24: the results table of a size sweep scrolled sideways at 1400 px (long names, latency cells with
    their reasons on one line). Neither the page nor a table may scroll sideways at that width."""
    from plots.report import main

    runs, out = synthetic_sweep(tmp_path)
    assert main([str(runs), "--out", str(out)]) == 0
    text = (out / "index.html").read_text()
    assert "⚠ spread 38% &gt; 10%" in text and "interval ±15% &gt; ±3% over 550 rounds" in text  # the long cells
    dom = browse((out / "index.html").as_uri(), "--window-size=1400,900", "--dump-dom").stdout
    assert attribute(dom, "html", "data-js-errors") == ""
    assert attribute(dom, "body", "data-overflow-x") == "page:0 results-table:0 runs-table:0"
    rows = result_rows(dom)
    assert [r[0] for r in rows] == [f"{m}-train.label_smoothing=0.1" for m in ("simple_cnn", "cnn_tr_small",
                                                                               "cnn_tr_medium", "cnn_tr_large")]
    assert "sizes-fashion_mnist-" in dom.split('id="results-table"')[0].rsplit("<h2", 1)[1]  # the prefix, named
