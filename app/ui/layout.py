"""The page: one function per tab lays out its components; ``build_app`` wires events.

Widgets of the form come from :data:`app.ui.form.FIELDS` (one row per control). The
endpoints for scripts and agents have stable names (``start``, ``status``, ``cancel``,
``retrieve``: :func:`api_endpoints`); every other event is private to the page.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import library, settings
from app.config import ASSETS, PRESETS, preset
from . import api, datasets, pictures, results, runs, sessions, views
from .form import CONTROL_KEYS, FIELDS, Field, choices, param_specs, shipped_teachers, values_from
from .keys import server_secret
from .learn import LEARN_MD
from .onnx_export import export_onnx, onnx_choices
from .studio import studio

DEFAULT_PRESET = "workshop"
POLL_SECONDS = 0.5  # how often the page reads the job snapshot
PRIVATE = {"api_visibility": "private"}
WIDGETS = {"number": gr.Number, "int": gr.Number, "slider": gr.Slider, "checkbox": gr.Checkbox,
           "dropdown": gr.Dropdown, "radio": gr.Radio, "textbox": gr.Textbox}


def start_values() -> dict:
    cfg = preset(DEFAULT_PRESET)
    if not shipped_teachers():
        cfg = cfg.with_overrides({"teacher.checkpoint": None, "teacher.epochs": 15})
    return values_from(cfg, studio().context(None))


def make_widget(f: Field, value, ctx) -> gr.components.Component:
    """The Gradio component of one form row."""
    kw = {k: v for k, v in f.options.items() if k != "choices"}
    if f.widget in ("dropdown", "radio"):
        kw["choices"] = choices(f.key, ctx)
    if f.widget == "int":
        kw["precision"] = 0
    if f.key.startswith("p") and f.key[1:].isdigit():
        spec = param_specs(start_values()["kd_loss"])[int(f.key[1:])]
        kw.update(label=spec["label"], visible=spec["visible"])
    if f.key == "data_path":
        kw["visible"] = not ctx.public
    return WIDGETS[f.widget](**{"label": f.label, "value": value, "elem_id": f"field-{f.key}", **kw})


def place(c: dict, where: str, vals: dict, ctx) -> None:
    """Lay out every form row whose place is ``where``."""
    for f in FIELDS:
        if f.place == where:
            c[f.key] = make_widget(f, vals[f.key], ctx)


def setup_tab(c: dict, vals: dict, ctx) -> dict:
    out = {}
    with gr.Row():
        for name in PRESETS:
            c[f"preset:{name}"] = gr.Button(name, size="sm", variant="primary" if name == DEFAULT_PRESET else "secondary")
    with gr.Row():
        with gr.Column():
            place(c, "setup/data", vals, ctx)
            out["data_upload"] = gr.File(label="Upload a dataset (.zip or .tar.gz: train/ and test/ class folders)",
                                         file_types=[".zip", ".gz", ".tgz", ".tar"], elem_id="data-upload")
            out["data_msg"] = gr.Markdown(elem_id="data-msg")
        with gr.Column():
            place(c, "setup/models", vals, ctx)
            out["teacher_card"] = gr.Markdown()
            out["student_card"] = gr.Markdown()
    out["verdict"] = gr.Markdown(elem_id="verdict")
    return out


def distill_tab(c: dict, vals: dict, ctx) -> dict:
    out = {}
    with gr.Row():
        for column in ("loss", "indistill", "training"):
            with gr.Column():
                place(c, f"distill/{column}", vals, ctx)
    out["timeline"] = gr.Plot(label="Schedule", elem_id="timeline")
    with gr.Row():
        out["export_btn"] = gr.Button("Export configuration (JSON)", size="sm")
        out["export_file"] = gr.File(label="Exported", interactive=False)
        out["import_file"] = gr.File(label="Import configuration (JSON)", file_types=[".json"])
    out["io_msg"] = gr.Markdown()
    return out


def train_tab() -> dict:
    out = {"problems": gr.Markdown(elem_id="problems")}
    with gr.Row():
        out["start_btn"] = gr.Button("Start", variant="primary", elem_id="start")
        out["cancel_btn"] = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel")
        out["run_id_box"] = gr.Textbox(label="Open a run by id (its share link: this page's address + ?run=ID)",
                                       scale=2, elem_id="run-id", max_length=200)
        out["open_btn"] = gr.Button("Open", size="sm", elem_id="open")
    shipped = library.ids()
    out["library"] = gr.Dropdown(shipped, value=None, label="Results library: multi-seed runs shipped with the app "
                                 "(open one read-only, in every tab)", visible=bool(shipped), elem_id="library")
    out["status"] = gr.Markdown("No run yet — press **Start**.", elem_id="status")
    out["action_msg"] = gr.Markdown(elem_id="action-msg")
    out["loss_plot"] = gr.Plot(label="Losses", elem_id="loss-plot")
    out["acc_plot"] = gr.Plot(label="Accuracy", elem_id="acc-plot")
    out["log_box"] = gr.Textbox(label="Events", lines=10, max_lines=20, elem_id="log", autoscroll=True)
    return out


def pruning_tab(examples: list[str]) -> dict:
    out = {"channel_plot": gr.Plot(label="Channel L1 norms", elem_id="channel-plot")}
    with gr.Row():
        out["fm_example"] = gr.Dropdown([Path(p).stem for p in examples], label="Sample image",
                                        value=Path(examples[0]).stem if examples else None)
        out["fm_btn"] = gr.Button("Show feature maps")
    out["fm_note"] = gr.Markdown()
    out["fm_gallery"] = gr.HTML(elem_id="feature-maps")
    return out


def compare_tab() -> dict:
    return {"compare_btn": gr.Button("Refresh", size="sm", elem_id="compare-refresh"),
            "compare_note": gr.Markdown(),
            "table": gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, elem_id="compare-table", wrap=True,
                                  column_widths=views.COMPARE_WIDTHS),  # fits ~1,000 px: no sideways scroll
            "scatter": gr.Plot(label="Accuracy vs latency"),
            "downloads": gr.File(label="Downloads: results (JSON, CSV) and student checkpoints", file_count="multiple"),
            **onnx_export()}


def onnx_export() -> dict:
    gr.Markdown("#### Deploy a student: ONNX\nExports the checkpoint with `torch.onnx` (outputs: logits and the "
                "embedding), checks it against PyTorch on test images and times both on this CPU.")
    with gr.Row():
        out = {"onnx_pick": gr.Dropdown(label="Student checkpoint", choices=[], elem_id="onnx-pick"),
               "onnx_btn": gr.Button("Export to ONNX", elem_id="onnx-export")}
    out["onnx_md"] = gr.Markdown(elem_id="onnx-md")
    out["onnx_file"] = gr.File(label="ONNX model", elem_id="onnx-file")
    return out


def retrieval_tab(examples: list[str]) -> dict:
    out = {}
    with gr.Row():
        with gr.Column(scale=1):
            out["upload"] = gr.File(label="Upload a picture", file_types=["image"], elem_id="upload")
            if examples:
                gr.Examples(examples=[[e] for e in examples], inputs=[out["upload"]], label="Or pick an example")
            out["metric"] = gr.Radio(["cosine", "euclidean"], value="cosine", label="Distance")
            out["k"] = gr.Slider(1, studio().limits.retrieval.max_k, step=1, value=8, label="Neighbours per model")
            out["ret_btn"] = gr.Button("Retrieve", variant="primary")
        with gr.Column(scale=2):
            out["query_img"] = gr.Image(label="Query", height=160, interactive=False)
            out["ret_md"] = gr.Markdown(elem_id="retrieval-msg")
            out["ret_gallery"] = gr.Gallery(label="Nearest training images", columns=8, height="auto",
                                            elem_id="retrieval-gallery")
    out["pr_metric"] = gr.Radio(["cosine", "euclidean"], value="cosine", label="Test-set curves")
    out["pr_plot"] = gr.Plot(label="Precision–recall")
    return out


def info_tab() -> dict:
    out = {"info_btn": gr.Button("Refresh", size="sm"), "info_plot": gr.Plot(label="Information flow"),
           "div_table": gr.Dataframe(headers=["student", "seed", "mean |I_student − I_teacher| (bits)"],
                                     interactive=False)}
    out["fmse_plot"] = gr.Plot(label="Feature-map MSE to the pruned teacher (Fig. 2)")
    out["fdiv_plot"] = gr.Plot(label="Information-flow divergence (Fig. 4)")
    gr.Markdown("### Curriculum grid (the paper's Fig. 5, on a small budget)\n"
                "Trains only the InDistill student for every (a, b), plus two controls: the same warm-up "
                "*without* curriculum (all layers jointly) and no warm-up (KD only). Every run trains for the "
                "same total T: the warm-up comes out of it and KD gets the rest. All runs share one teacher "
                "and one auxiliary teacher. Progress shows in the Train tab.")
    with gr.Row():
        out["grid_a"] = gr.Textbox(label="a values", value="0.25, 0.5", max_length=100)
        out["grid_b"] = gr.Textbox(label="b values", value="0, 0.25", max_length=100)
        out["grid_epochs"] = gr.Number(label="Student epochs per run, T (warm-up + KD)", value=8, minimum=0.1)
        out["grid_btn"] = gr.Button("Run grid", variant="primary")
    out["grid_msg"] = gr.Markdown()
    out["grid_heat"] = gr.Plot(label="Grid")
    out["grid_flow"] = gr.Plot(label="With vs without curriculum")
    return out


def api_endpoints() -> None:
    """Endpoints for scripts, plain HTTP and MCP agents (:mod:`app.ui.api`): plain data in and out,
    no server-side state between calls (a caller keeps its ``session_key``)."""
    note = api.limits_note()
    api.mcp_answers_as_json()  # an MCP agent reads JSON objects, as gradio_client and plain HTTP callers do
    with gr.Row(visible=False):
        preset_in, overrides_in = gr.Textbox(value=DEFAULT_PRESET), gr.Textbox(value="")
        key_in, run_in = gr.Textbox(value=""), gr.Textbox(value="")
        image_in = gr.File(type="filepath")  # a path only: the app's checked loader reads it, Gradio decodes nothing
        k_in, metric_in = gr.Number(value=8), gr.Textbox(value="cosine")
        out = gr.JSON()
        buttons = {name: gr.Button(name) for name in ("start", "status", "cancel", "retrieve")}
    inputs = {"start": [preset_in, overrides_in, key_in], "status": [key_in, run_in], "cancel": [key_in, run_in],
              "retrieve": [image_in, k_in, metric_in, run_in, key_in]}
    for name, button in buttons.items():
        fn = getattr(api, name)
        description = api.describe(fn) + (note if name == "start" else "")
        # status is cheap (no queue round trip); the others take a queue slot like the page's buttons
        button.click(fn, inputs[name], out, api_name=name, api_description=description, queue=name != "status")


def build_app() -> gr.Blocks:
    ctx = studio().context(None)
    vals = start_values()
    examples = sorted(str(p) for p in (ASSETS / "examples").glob("*.jpg"))
    # Gradio's usage analytics: off on a public server unless INDISTILL_ANALYTICS=1 (locally Gradio's default)
    analytics = settings.read("INDISTILL_ANALYTICS") if ctx.public else None
    with gr.Blocks(title="InDistill Studio", delete_cache=(600, 3600), analytics_enabled=analytics) as demo:
        session = gr.State(None, time_to_live=24 * 3600, delete_callback=sessions.end_session)
        stored = gr.BrowserState(None, storage_key="indistill-studio-session", secret=browser_key())
        seen, seen_charts = gr.State(None), gr.State(None)
        mode = "public server: runs are private to your session, data from the offered list or your upload" \
            if ctx.public else "local"
        gr.Markdown("# InDistill Studio\nDistil a big CNN into a small one — with InDistill's pruned, "
                    f"layer-by-layer warm-up before ordinary knowledge distillation. _({mode})_")
        c: dict = {}
        with gr.Tabs():
            with gr.Tab("Setup", id="setup"):
                s = setup_tab(c, vals, ctx)
            with gr.Tab("Distill", id="distill"):
                d = distill_tab(c, vals, ctx)
            with gr.Tab("Train", id="train"):
                t = train_tab()
            with gr.Tab("Pruning", id="pruning"):
                pr = pruning_tab(examples)
            with gr.Tab("Compare", id="compare"):
                cm = compare_tab()
            with gr.Tab("Retrieval", id="retrieval"):
                r = retrieval_tab(examples)
            with gr.Tab("Information flow", id="info"):
                i = info_tab()
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(LEARN_MD)
        api_endpoints()
        wire(demo, c, s, d, t, pr, cm, r, i, session, stored, seen, seen_charts)
    return demo


def wire(demo, c, s, d, t, pr, cm, r, i, session, stored, seen, seen_charts) -> None:
    """Connect the events (all private to the page; the script API is in :func:`api_endpoints`)."""
    controls = [c[k] for k in CONTROL_KEYS]
    check_outputs = [t["problems"], t["start_btn"], d["timeline"], s["verdict"]]
    for comp in controls:
        comp.change(runs.check, [session] + controls, check_outputs, show_progress="hidden", **PRIVATE)
    for role in ("teacher", "student"):
        c[role].change(views.model_card, c[role], s[f"{role}_card"], show_progress="hidden", **PRIVATE)
    params = [c[k] for k in CONTROL_KEYS if k.startswith("p") and k[1:].isdigit()]
    c["kd_loss"].input(lambda loss: runs.param_updates(loss), c["kd_loss"], params, **PRIVATE)
    for name in PRESETS:
        c[f"preset:{name}"].click(lambda sess, n=name: runs.apply_preset(n, sess), session, controls, **PRIVATE)
    s["data_upload"].upload(datasets.upload_dataset, [session, s["data_upload"]], [session, s["data_msg"], c["dataset"]],
                            **PRIVATE)
    d["export_btn"].click(results.export_config, [session] + controls, [d["export_file"], d["io_msg"]], **PRIVATE)
    d["import_file"].upload(results.import_config, [session, d["import_file"]], controls + [d["io_msg"]], **PRIVATE)

    t["start_btn"].click(runs.start_on_page, [session] + controls, [session, stored, t["action_msg"]], **PRIVATE)
    t["cancel_btn"].click(runs.cancel, session, t["action_msg"], **PRIVATE)
    for opened in (t["open_btn"].click(runs.open_run, [session, t["run_id_box"]], [session, stored, t["action_msg"]],
                                       **PRIVATE),
                   t["library"].input(runs.open_run, [session, t["library"]], [session, stored, t["action_msg"]],
                                      **PRIVATE)):
        # an opened run's comparison shows at once, not after the next poll notices the new run
        opened.then(results.compare, session, [cm["table"], cm["scatter"], cm["downloads"], cm["compare_note"]],
                    show_progress="hidden", **PRIVATE).then(onnx_choices, session, cm["onnx_pick"],
                                                             show_progress="hidden", **PRIVATE)
    timer = gr.Timer(POLL_SECONDS)
    results_cue = gr.Textbox(visible=False)
    timer.tick(runs.tick_status, [session, seen],
               [t["status"], t["log_box"], t["start_btn"], t["cancel_btn"], results_cue, seen],
               show_progress="hidden", **PRIVATE)
    timer.tick(runs.tick_charts, [session, seen_charts], [t["loss_plot"], t["acc_plot"], pr["channel_plot"], seen_charts],
               show_progress="hidden", **PRIVATE)
    for trigger in (cm["compare_btn"].click, results_cue.change):
        trigger(results.compare, session, [cm["table"], cm["scatter"], cm["downloads"], cm["compare_note"]],
                show_progress="hidden", **PRIVATE)
        trigger(onnx_choices, session, cm["onnx_pick"], show_progress="hidden", **PRIVATE)
    cm["onnx_btn"].click(export_onnx, [session, cm["onnx_pick"]], [cm["onnx_file"], cm["onnx_md"]], **PRIVATE)
    for trigger in (i["info_btn"].click, results_cue.change):
        trigger(results.info_views, session, [i["info_plot"], i["div_table"], i["fmse_plot"], i["fdiv_plot"]],
                show_progress="hidden", **PRIVATE)
        trigger(results.grid_views, session, [i["grid_heat"], i["grid_flow"]], show_progress="hidden", **PRIVATE)
    for trigger in (r["pr_metric"].change, results_cue.change):
        trigger(results.pr_view, [session, r["pr_metric"]], r["pr_plot"], show_progress="hidden", **PRIVATE)
    i["grid_btn"].click(runs.run_grid_on_page, [session, i["grid_a"], i["grid_b"], i["grid_epochs"]] + controls,
                        [session, stored, i["grid_msg"]], **PRIVATE)
    for trigger in (r["ret_btn"].click, r["upload"].change):
        trigger(pictures.retrieve, [r["upload"], session, r["metric"], r["k"]],
                [r["query_img"], r["ret_md"], r["ret_gallery"]], **PRIVATE)
    maps_drawn_for = gr.State(None)
    pr["fm_btn"].click(pictures.feature_maps, [pr["fm_example"], session], [pr["fm_gallery"], pr["fm_note"]],
                       **PRIVATE).then(pictures.run_on_show, session, maps_drawn_for, **PRIVATE)
    results_cue.change(pictures.clear_outdated_maps, [session, maps_drawn_for],
                       [pr["fm_gallery"], pr["fm_note"], maps_drawn_for], show_progress="hidden", **PRIVATE)

    def on_load(stored_value, request: gr.Request):
        run = dict(request.query_params).get("run") if request is not None else None
        sess, note = sessions.restore(stored_value, run)
        return sess, sessions.remembered(sess), sess["run"] or "", note if run else ""
    demo.load(on_load, stored, [session, stored, t["run_id_box"], t["action_msg"]], **PRIVATE)
    demo.load(runs.check, [session] + controls, check_outputs, **PRIVATE)
    demo.load(lambda a, b: (views.model_card(a), views.model_card(b)), [c["teacher"], c["student"]],
              [s["teacher_card"], s["student_card"]], **PRIVATE)


def browser_key() -> str:
    """A stable key for the browser-stored session, so a restarted server's page can still decode it.

    Not a secret: Gradio hands it to every page, which encrypts in the browser. What protects a
    run is the session secret inside (128 random bits, checked by its digest on the server)."""
    return server_secret(studio().runs_root, ".browser-key", 16).hex()

