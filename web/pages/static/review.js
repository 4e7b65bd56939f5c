/* The review desk: overlay boxes, window/level, zoom, per-finding decisions, text, sign, reject.
   Every change goes to the JSON API with the version on screen; the server decides. */
"use strict";

(function () {
  const R = window.RadDraft;
  const main = document.getElementById("main");
  const reportId = main.dataset.report;
  let version = Number(main.dataset.version);
  const canEdit = main.dataset.canEdit === "true";
  const stage = document.getElementById("stage");
  const frames = Array.from(document.querySelectorAll(".frame"));
  const findingItems = Array.from(document.querySelectorAll(".finding"));
  let current = frames.find((f) => !f.hidden) || null;
  let zoom = 1;
  let selected = -1;
  let busy = false;

  function setVersion(row) {
    version = row.number;
    main.dataset.version = String(version);
    const label = document.getElementById("version-label");
    if (label) label.textContent = "version " + version;
    const badge = document.getElementById("state-badge");
    if (badge && row.state) {
      badge.className = "badge state-" + row.state;
      badge.textContent = row.state === "in_review" ? "In review" : row.state;
    }
  }

  /* ---- boxes ---- */
  function boxesOf(uid) {
    return Array.from(document.querySelectorAll('.overlay g[data-finding="' + CSS.escape(uid) + '"]'));
  }
  document.querySelectorAll(".box-toggle").forEach((box) => {
    box.addEventListener("change", () => {
      boxesOf(box.dataset.uid).forEach((g) => g.classList.toggle("is-hidden", !box.checked));
    });
  });
  const boxesButton = document.getElementById("boxes-toggle");
  function toggleAllBoxes() {
    const on = boxesButton.getAttribute("aria-pressed") !== "true";
    boxesButton.setAttribute("aria-pressed", on ? "true" : "false");
    document.querySelectorAll(".overlay").forEach((svg) => svg.classList.toggle("is-hidden", !on));
  }
  if (boxesButton) boxesButton.addEventListener("click", toggleAllBoxes);

  /* ---- the prior fills its pane as far as its shape allows (a small PNG is scaled up) ---- */
  const prior = document.querySelector(".prior-stage img");
  function fitPrior() {
    if (!prior || !prior.naturalWidth) return;
    const pane = prior.parentElement;
    const aspect = prior.naturalWidth / prior.naturalHeight;
    prior.style.width = Math.min(pane.clientWidth, pane.clientHeight * aspect) + "px";
  }
  if (prior) prior.addEventListener("load", fitPrior);
  fitPrior();
  window.addEventListener("resize", fitPrior);

  /* ---- zoom: the frame is sized in pixels; the SVG viewBox keeps boxes on stored pixels ---- */
  function layout() {
    if (!current || !stage) return;
    const img = current.querySelector("img");
    const cols = Number(img.getAttribute("width")) || 1;
    const rows = Number(img.getAttribute("height")) || 1;
    const fit = Math.min(stage.clientWidth, stage.clientHeight * (cols / rows));
    frames.forEach((f) => { f.style.width = Math.max(fit * zoom, 50) + "px"; });
    const out = document.getElementById("zoom-level");
    if (out) out.textContent = Math.round(zoom * 100) + "%";
  }
  function setZoom(value) {
    zoom = Math.min(Math.max(value, 1), 6);
    layout();
  }
  const zoomIn = document.getElementById("zoom-in");
  if (zoomIn) zoomIn.addEventListener("click", () => setZoom(zoom * 1.5));
  const zoomOut = document.getElementById("zoom-out");
  if (zoomOut) zoomOut.addEventListener("click", () => setZoom(zoom / 1.5));
  const zoomFit = document.getElementById("zoom-fit");
  if (zoomFit) zoomFit.addEventListener("click", () => setZoom(1));
  window.addEventListener("resize", layout);

  /* ---- window/level: the API re-renders the PNG with the window asked for ---- */
  const wlCenter = document.getElementById("wl-center");
  const wlWidth = document.getElementById("wl-width");
  let wlTimer = null;
  function imageUrl(frame, windowed) {
    let url = frame.dataset.src + "&max_size=1400";
    if (windowed && wlCenter && wlWidth) {
      url += "&window_center=" + encodeURIComponent(wlCenter.value) + "&window_width=" + encodeURIComponent(wlWidth.value);
    }
    return url;
  }
  function applyWindow() {
    if (!current) return;
    current.querySelector("img").src = imageUrl(current, true);
  }
  function onWindowInput() {
    clearTimeout(wlTimer);
    wlTimer = setTimeout(applyWindow, 150);
  }
  if (wlCenter) wlCenter.addEventListener("input", onWindowInput);
  if (wlWidth) wlWidth.addEventListener("input", onWindowInput);
  function resetWindow() {
    if (!current) return;
    current.querySelector("img").src = imageUrl(current, false);
    if (wlCenter) wlCenter.value = wlCenter.defaultValue;
    if (wlWidth) wlWidth.value = wlWidth.defaultValue;
  }
  const wlReset = document.getElementById("wl-reset");
  if (wlReset) wlReset.addEventListener("click", resetWindow);

  /* ---- views ---- */
  const viewButtons = Array.from(document.querySelectorAll(".view-btn"));
  function showView(sop) {
    frames.forEach((f) => { f.hidden = f.dataset.sop !== sop; });
    current = frames.find((f) => !f.hidden) || null;
    viewButtons.forEach((b) => b.setAttribute("aria-pressed", b.dataset.sop === sop ? "true" : "false"));
    const label = document.getElementById("current-view");
    if (label && current) label.textContent = current.dataset.view || "";
    if (current && wlCenter && wlWidth) {
      wlCenter.min = current.dataset.low; wlCenter.max = current.dataset.high;
      wlWidth.max = String(Number(current.dataset.high) - Number(current.dataset.low) + 1);
    }
    layout();
  }
  viewButtons.forEach((b) => b.addEventListener("click", () => showView(b.dataset.sop)));
  function nextView() {
    if (frames.length < 2 || !current) return;
    const i = frames.indexOf(current);
    showView(frames[(i + 1) % frames.length].dataset.sop);
  }

  /* ---- findings ---- */
  function select(index) {
    if (!findingItems.length) return;
    selected = (index + findingItems.length) % findingItems.length;
    findingItems.forEach((li, i) => li.classList.toggle("is-selected", i === selected));
    document.querySelectorAll(".overlay g").forEach((g) => g.classList.remove("is-selected"));
    const li = findingItems[selected];
    boxesOf(li.dataset.uid).forEach((g) => g.classList.add("is-selected"));
    li.focus();
  }
  findingItems.forEach((li, i) => li.addEventListener("click", (e) => {
    if (e.target.closest("button, input, summary, form")) return;
    select(i);
  }));

  function showFinding(finding) {
    const li = findingItems.find((x) => x.dataset.uid === finding.tracking_uid);
    if (!li) return;
    li.classList.toggle("is-accepted", finding.accepted);
    li.classList.toggle("is-rejected", !finding.accepted);
    li.querySelector(".decision-tag").textContent = finding.accepted ? "Accepted" : "Rejected";
    li.querySelector(".label").textContent = finding.label;
    boxesOf(finding.tracking_uid).forEach((g) => {
      g.classList.toggle("rejected", !finding.accepted);
      if (finding.box) {
        const rect = g.querySelector("rect");
        const text = g.querySelector("text");
        const dy = Number(text.getAttribute("y")) - Number(rect.getAttribute("y"));
        rect.setAttribute("x", finding.box.x0); rect.setAttribute("y", finding.box.y0);
        rect.setAttribute("width", finding.box.x1 - finding.box.x0);
        rect.setAttribute("height", finding.box.y1 - finding.box.y0);
        text.setAttribute("x", finding.box.x0 + 4);
        text.setAttribute("y", finding.box.y0 + dy);
      }
    });
  }

  function showError(error) {
    const box = document.getElementById("action-error");
    const text = R.explain(error);
    if (box) box.textContent = text;
    R.toast(text, "error");
  }

  async function findingAction(uid, action, extra) {
    if (!canEdit || busy) return;
    busy = true;
    try {
      const result = await R.post("/api/reports/" + reportId + "/findings/" + encodeURIComponent(uid),
        Object.assign({ expected_version: version, action: action }, extra || {}));
      setVersion(result.version);
      const found = (result.version.content.findings || []).find((f) => f.tracking_uid === uid);
      if (found) showFinding(found);
      R.toast((found ? found.label : "Finding") + ": " + (action === "edit" ? "edited" : action + "ed"));
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
  }
  document.querySelectorAll(".act-accept").forEach((b) => b.addEventListener("click", () => findingAction(b.dataset.uid, "accept")));
  document.querySelectorAll(".act-reject").forEach((b) => b.addEventListener("click", () => findingAction(b.dataset.uid, "reject")));
  document.querySelectorAll(".edit-finding-form").forEach((form) => form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const extra = { label: String(data.get("label") || "").trim() };
    if (data.get("x0") !== null) {
      extra.box = { x0: Number(data.get("x0")), y0: Number(data.get("y0")), x1: Number(data.get("x1")), y1: Number(data.get("y1")) };
    }
    findingAction(form.dataset.uid, "edit", extra).then(() => { form.closest("details").open = false; });
  }));

  /* ---- add a missed finding: drag a box over the current image, in stored pixels ---- */
  const addForm = document.getElementById("add-finding-form");
  const drawButton = document.getElementById("draw-box");
  let drawing = false;
  let dragStart = null;
  function storedPoint(event) {
    const img = current.querySelector("img");
    const rect = img.getBoundingClientRect();
    const cols = Number(img.getAttribute("width")) || 1;
    const rows = Number(img.getAttribute("height")) || 1;
    const x = Math.min(Math.max((event.clientX - rect.left) / rect.width, 0), 1) * cols;
    const y = Math.min(Math.max((event.clientY - rect.top) / rect.height, 0), 1) * rows;
    return { x: Math.round(x), y: Math.round(y) };
  }
  function drawnRect() {
    const svg = current.querySelector("svg.overlay");
    let rect = svg.querySelector("rect.drawn");
    if (!rect) {
      rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      rect.setAttribute("class", "drawn");
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(rect);
    }
    return rect;
  }
  function setBox(a, b) {
    const box = { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) };
    ["x0", "y0", "x1", "y1"].forEach((k) => { document.getElementById("add-" + k).value = box[k]; });
    const rect = drawnRect();
    rect.setAttribute("x", box.x0); rect.setAttribute("y", box.y0);
    rect.setAttribute("width", box.x1 - box.x0); rect.setAttribute("height", box.y1 - box.y0);
    document.getElementById("add-sop").value = current.dataset.sop;
  }
  if (drawButton && stage) {
    drawButton.addEventListener("click", () => {
      drawing = !drawing;
      drawButton.setAttribute("aria-pressed", drawing ? "true" : "false");
      frames.forEach((f) => f.classList.toggle("drawing", drawing));
    });
    stage.addEventListener("pointerdown", (e) => {
      if (!drawing || !current) return;
      e.preventDefault();
      dragStart = storedPoint(e);
    });
    stage.addEventListener("pointermove", (e) => { if (drawing && dragStart) setBox(dragStart, storedPoint(e)); });
    stage.addEventListener("pointerup", (e) => {
      if (!drawing || !dragStart) return;
      setBox(dragStart, storedPoint(e));
      dragStart = null;
    });
  }
  if (addForm) addForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    const data = new FormData(addForm);
    const body = { expected_version: version, label: String(data.get("label") || "").trim() };
    if (data.get("laterality")) body.laterality = String(data.get("laterality"));
    const coords = ["x0", "y0", "x1", "y1"].map((k) => data.get(k));
    if (coords.every((v) => v !== null && v !== "")) {
      body.sop_instance_uid = String(data.get("sop_instance_uid"));
      body.box = { x0: Number(coords[0]), y0: Number(coords[1]), x1: Number(coords[2]), y1: Number(coords[3]) };
    }
    busy = true;
    try {
      await R.post("/api/reports/" + reportId + "/findings", body);
      window.location.reload();
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
  });

  /* ---- text ---- */
  const textForm = document.getElementById("text-form");
  const fields = ["findings_text", "impression", "progression"];
  const saved = {};
  function fieldEl(name) { return textForm ? textForm.elements.namedItem(name) : null; }
  fields.forEach((name) => { const el = fieldEl(name); if (el) saved[name] = el.value; });
  function dirty() { return fields.some((name) => { const el = fieldEl(name); return el && el.value !== saved[name]; }); }
  function markStatus(text) { const s = document.getElementById("text-status"); if (s) s.textContent = text; }
  if (textForm) {
    textForm.addEventListener("input", () => markStatus(dirty() ? "Unsaved changes" : ""));
    textForm.addEventListener("submit", (e) => { e.preventDefault(); saveText(); });
  }
  async function saveText() {
    if (!textForm || !dirty()) return true;
    const body = { expected_version: version };
    fields.forEach((name) => { const el = fieldEl(name); if (el.value !== saved[name]) body[name] = el.value; });
    try {
      const result = await R.post("/api/reports/" + reportId + "/edit", body);
      setVersion(result.version);
      fields.forEach((name) => { saved[name] = fieldEl(name).value; });
      markStatus("Saved as version " + result.version.number);
      return true;
    } catch (error) {
      showError(error);
      return false;
    }
  }
  window.addEventListener("beforeunload", (e) => { if (dirty() && !busy) { e.preventDefault(); e.returnValue = ""; } });

  /* ---- sign and reject ---- */
  async function sign() {
    if (!canEdit || busy) return;
    const reason = document.querySelector('input[name="edit_reason"]:checked');
    if (!reason) {
      showError(new R.ApiError(0, "Choose what you changed (nothing, content, style or both) before signing."));
      const first = document.querySelector('input[name="edit_reason"]');
      if (first) first.focus();
      return;
    }
    if (!(await saveText())) return;
    busy = true;
    try {
      await R.post("/api/reports/" + reportId + "/sign", { expected_version: version, edit_reason: reason.value });
      window.location.reload();
    } catch (error) {
      busy = false;
      showError(error);
    }
  }
  async function reject() {
    if (!canEdit || busy) return;
    const reasonEl = document.getElementById("reject-reason");
    const reason = reasonEl.value.trim();
    if (!reason) {
      showError(new R.ApiError(0, "Say why the draft is rejected."));
      reasonEl.focus();
      return;
    }
    busy = true;
    try {
      await R.post("/api/reports/" + reportId + "/reject", { expected_version: version, reason: reason });
      window.location.reload();
    } catch (error) {
      busy = false;
      showError(error);
    }
  }
  const signButton = document.getElementById("sign-btn");
  if (signButton) signButton.addEventListener("click", sign);
  const rejectButton = document.getElementById("reject-btn");
  if (rejectButton) rejectButton.addEventListener("click", reject);

  /* ---- help ---- */
  const dialog = document.getElementById("help-dialog");
  const helpButton = document.getElementById("help-btn");
  function help() { if (dialog && !dialog.open) dialog.showModal(); }
  if (helpButton) helpButton.addEventListener("click", help);

  /* ---- keyboard ---- */
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); sign(); return; }
    if ((e.ctrlKey || e.metaKey) && (e.key === "s" || e.key === "S")) { e.preventDefault(); saveText(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || R.typing(e) || (dialog && dialog.open)) return;
    const uid = selected >= 0 ? findingItems[selected].dataset.uid : null;
    switch (e.key) {
      case "j": select(selected + 1); break;
      case "k": select(selected - 1); break;
      case "a": if (uid) findingAction(uid, "accept"); break;
      case "x": if (uid) findingAction(uid, "reject"); break;
      case "t":
        if (uid) {
          const box = document.querySelector('.box-toggle[data-uid="' + CSS.escape(uid) + '"]');
          if (box) { box.checked = !box.checked; box.dispatchEvent(new Event("change")); }
        }
        break;
      case "b": if (boxesButton) toggleAllBoxes(); break;
      case "+": case "=": setZoom(zoom * 1.5); break;
      case "-": setZoom(zoom / 1.5); break;
      case "0": setZoom(1); break;
      case "w": resetWindow(); break;
      case "v": nextView(); break;
      case "e": { const imp = document.getElementById("impression"); if (imp) imp.focus(); break; }
      case "?": help(); break;
      default: return;
    }
    e.preventDefault();
  });

  /* ---- the trace follows its draft (issue 19): say when it is stored; never reload over edits ---- */
  const tracePending = document.getElementById("trace-pending");
  let tracePolls = 0;
  async function pollTrace() {
    try {
      const detail = await R.getJson("/api/reports/" + reportId);
      const timings = (detail.provenance && detail.provenance.timings) || {};
      if (timings.trace !== "pending") {
        tracePending.textContent = "The trace is stored (" + timings.trace + "): reload the page to see it.";
        return;
      }
    } catch (_e) { /* try again later */ }
    if (++tracePolls < 120) setTimeout(pollTrace, 5000);
  }
  if (tracePending) setTimeout(pollTrace, 5000);

  layout();
  document.querySelectorAll(".frame img").forEach((img) => img.addEventListener("load", layout, { once: true }));
})();
