/* The queue page: renders /queue/data.json and fetches it again every 5 seconds.
   A section is rebuilt only when its figures changed, so keyboard focus stays put. */
"use strict";

(function () {
  const R = window.RadDraft;
  const REFRESH_MS = 5000;
  const last = {};
  let paused = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (v === null || v === undefined || v === false) return;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    });
    children.flat().forEach((c) => {
      if (c === null || c === undefined || c === false) return;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    });
    return node;
  }
  function table(caption, headers, rows) {
    return el("table", { class: "compact" },
      el("caption", { class: "visually-hidden" }, caption),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
  }
  function empty(text) { return el("p", { class: "muted" }, text); }
  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return (value * 1000).toFixed(0) + " ms";
    if (value < 90) return value.toFixed(1) + " s";
    if (value < 5400) return (value / 60).toFixed(1) + " min";
    if (value < 172800) return (value / 3600).toFixed(1) + " h";
    return (value / 86400).toFixed(1) + " d";
  }
  function bytes(value) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return value.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : ""; }
  const STATE_ORDER = ["queued", "drafting", "drafted", "in_review", "signed", "amended", "corrected", "rejected", "failed", "superseded"];
  const STATE_LABELS = { queued: "Queued", drafting: "Drafting", drafted: "Draft ready", in_review: "In review", signed: "Signed", rejected: "Rejected", superseded: "Superseded", failed: "Failed", amended: "Amended", corrected: "Corrected" };

  function actionButton(label, url, describe, danger) {
    const button = el("button", { type: "button", class: "btn btn-small" + (danger ? " btn-danger" : ""), "aria-label": label + " " + describe }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await R.post(url, {});
        R.toast(label + " done: " + describe);
        await refresh(true);
      } catch (error) {
        button.disabled = false;
        R.toast(R.explain(error), "error");
        document.getElementById("queue-error").textContent = R.explain(error);
      }
    });
    return button;
  }

  const render = {
    "q-states": (d) => el("ul", { class: "tiles-list" }, STATE_ORDER.filter((s) => s in d.reports_by_state).map((s) => [s, d.reports_by_state[s]]).map(([state, n]) =>
      el("li", { class: "tile" + (n ? "" : " tile-zero") }, el("span", { class: "tile-n" }, n), el("span", { class: "badge state-" + state }, STATE_LABELS[state] || state)))),
    "q-throughput": (d) => table("Throughput", ["", "Last hour", "Last day"], [
      ["Drafts made", d.throughput.hour.drafted, d.throughput.day.drafted],
      ["Reports signed", d.throughput.hour.signed, d.throughput.day.signed],
      ["Images received", d.throughput.hour.instances_stored, d.throughput.day.instances_stored],
    ]),
    "q-oldest": (d) => {
      const part = (title, item, hint) => el("div", { class: "oldest" }, el("h3", {}, title),
        item ? el("p", {}, el("strong", {}, seconds(item.waiting_s)), " · ",
          item.accession || item.study_instance_uid, " ", el("span", { class: "badge state-" + item.state }, STATE_LABELS[item.state] || item.state),
          " ", el("a", { href: "/reports/" + item.report_id }, "open")) : el("p", { class: "muted" }, hint));
      return el("div", {}, part("For a draft", d.oldest_waiting.draft, "Nothing waits for the model."),
        part("For a radiologist", d.oldest_waiting.review, "No draft waits for review."));
    },
    "q-disk": (d) => {
      const k = d.disk;
      const meter = el("meter", { min: 0, max: 100, low: k.watermark_percent * 0.8, high: k.watermark_percent, optimum: 0, value: k.used_percent, "aria-label": "Disk use" });
      return el("div", {}, el("p", { class: k.over ? "error" : "" }, el("strong", {}, k.used_percent.toFixed(1) + "% used"),
        " of " + bytes(k.total_bytes) + " (" + bytes(k.free_bytes) + " free); refuses images above " + k.watermark_percent + "% or below " + k.min_free_mb + " MB free",
        k.over ? " — OVER THE WATERMARK: images are being refused" : ""), meter, el("p", { class: "muted small" }, k.path));
    },
    "q-workers": (d) => d.workers.length ? table("Workers", ["Worker", "Queues", "Model", "Last heartbeat", "Job"], d.workers.map((w) => [
      el("span", {}, el("span", { class: "dot " + (w.alive ? "dot-ok" : "dot-bad"), "aria-hidden": "true" }), " ", w.name, el("span", { class: "visually-hidden" }, w.alive ? " (alive)" : " (silent)")),
      w.queues, el("span", {}, w.model || "–", w.demo ? el("span", { class: "badge badge-demo" }, "demo") : ""),
      seconds(w.age_s) + " ago", w.current_job ? "#" + w.current_job : "idle",
    ])) : empty("No worker has reported a heartbeat."),
    "q-jobs": (d) => d.jobs.length ? table("Jobs by queue and state", ["Queue", "State", "Jobs"], d.jobs.map((j) => [j.queue, j.state, j.count])) : empty("No jobs yet."),
    "q-dead": (d) => d.dead_jobs.length ? table("Dead jobs", ["Job", "Task", "Tries", "Last error", "Finished", ""], d.dead_jobs.map((j) => [
      "#" + j.id, el("span", {}, j.task, j.export ? el("span", { class: "badge badge-export" }, "export") : "", el("br"), el("span", { class: "muted small" }, j.key)),
      j.attempts + "/" + j.max_attempts, el("span", { class: "error-text" }, j.last_error || ""), when(j.finished_at),
      actionButton(j.export ? "Requeue" : "Retry", "/api/admin/jobs/" + j.id + "/retry", "job " + j.id + " (" + j.key + ")"),
    ])) : empty("No failed jobs."),
    "q-sends": (d) => d.failed_sends.length ? el("div", {}, el("h3", {}, "Objects whose last send failed"),
      table("Failed sends", ["What", "Identifier", "Where", "Tries", "Error"], d.failed_sends.map((s) => [s.kind.toUpperCase(), s.identifier, s.destination, s.attempts, s.last_error || ""]))) : el("span"),
    "q-critical": (d) => (d.critical_notifications || []).length ? table("Critical-finding notices",
      ["Report", "Finding", "Channel", "Where", "State", "Tries", "Ack / error"],
      d.critical_notifications.map((n) => [
        el("a", { href: "/reports/" + n.report }, String(n.report)), n.labels.join(", "), n.channel, n.destination,
        el("span", { class: "badge send-" + n.state }, n.state), n.attempts, n.ack || n.error || ""])) : empty("No critical-finding notice."),
    "q-failed": (d) => d.failed_reports.length ? table("Failed drafts", ["Study", "Failure", "When", ""], d.failed_reports.map((r) => [
      r.accession || r.study_instance_uid, el("span", { class: "error-text" }, r.failure || ""), when(r.updated_at),
      actionButton("Requeue", "/api/admin/study-versions/" + r.study_version_pk + "/requeue", "study " + (r.accession || r.study_instance_uid)),
    ])) : empty("No failed drafts."),
    "q-open": (d) => d.open_versions.length ? table("Open study versions", ["Study", "Version", "Quiet for", ""], d.open_versions.map((v) => [
      v.accession || v.study_instance_uid, v.number, seconds(v.quiet_s),
      actionButton("Force completion", "/api/admin/studies/" + encodeURIComponent(v.study_instance_uid) + "/force-complete", "study " + (v.accession || v.study_instance_uid)),
    ])) : empty("No study is waiting for more images."),
    "q-latency": (d) => {
      const rows = d.latency.filter((l) => l.n > 0);
      return rows.length ? table("Latency", ["Step", "n", "p50", "p95"], rows.map((l) => [
        el("span", {}, l.group ? el("span", { class: "muted small" }, l.group + " · ") : "", l.name), l.n, seconds(l.p50), seconds(l.p95)])) : empty("No drafts in the last 24 hours.");
    },
    "q-retention": (d) => {
      const r = d.retention;
      const policy = r.retention_days > 0
        ? "Images leave the archive " + r.retention_days + " days after their report is final (never while a draft is unsigned, an export pending, or a kept study uses them as its prior)."
        : "Retention is off: nothing is ever purged (RADDRAFT_RETENTION_DAYS=0).";
      return el("div", {}, el("p", {}, policy),
        el("dl", { class: "kv" },
          el("dt", {}, "Last purge"), el("dd", {}, r.last_purge_at ? when(r.last_purge_at) : "never"),
          el("dt", {}, "Purged, last 7 days"), el("dd", {}, r.purged_7d + " studies, " + bytes(r.purged_bytes_7d))),
        r.recent.length ? table("Recently purged", ["Study", "Instances", "Size", "When"], r.recent.map((p) => [p.study_instance_uid, p.instances, bytes(p.bytes || 0), when(p.at)])) : "");
    },
    "q-reader": (d) => {
      const f = d.reader_figures;
      const share = f.share_signed_without_edit === null ? "–" : (f.share_signed_without_edit * 100).toFixed(0) + "%";
      return el("div", {}, el("dl", { class: "kv" },
        el("dt", {}, "Signed"), el("dd", {}, f.signed),
        el("dt", {}, "Signed with no edit"), el("dd", {}, el("strong", {}, share), " (" + f.signed_without_edit + "; CheXOne reader study: 25%)"),
        el("dt", {}, "Median time to sign"), el("dd", {}, seconds(f.median_seconds_to_sign)),
        el("dt", {}, "Mean text changed"), el("dd", {}, f.mean_edit_ratio === null ? "–" : (f.mean_edit_ratio * 100).toFixed(1) + "%"),
        el("dt", {}, "Edit reasons stated"), el("dd", {}, Object.entries(f.edit_reasons).map(([k, v]) => k + " " + v).join(" · ")),
        el("dt", {}, "Finding decisions"), el("dd", {}, Object.entries(f.feedback).map(([k, v]) => k + " " + v).join(" · "))));
    },
  };
  const sectionData = {
    "q-states": (d) => d.reports_by_state, "q-throughput": (d) => d.throughput, "q-oldest": (d) => [d.oldest_waiting && d.oldest_waiting.draft && d.oldest_waiting.draft.report_id, d.oldest_waiting.review && d.oldest_waiting.review.report_id, Math.round(((d.oldest_waiting.draft || {}).waiting_s || 0) / 10), Math.round(((d.oldest_waiting.review || {}).waiting_s || 0) / 10)],
    "q-disk": (d) => [d.disk.used_percent, d.disk.over], "q-workers": (d) => d.workers.map((w) => [w.name, w.alive, w.model, w.current_job, Math.round(w.age_s)]),
    "q-jobs": (d) => d.jobs, "q-dead": (d) => d.dead_jobs, "q-sends": (d) => d.failed_sends, "q-critical": (d) => d.critical_notifications, "q-failed": (d) => d.failed_reports,
    "q-open": (d) => d.open_versions.map((v) => [v.study_version_pk, Math.round(v.quiet_s / 10)]), "q-latency": (d) => d.latency, "q-reader": (d) => d.reader_figures,
    "q-retention": (d) => d.retention,
  };

  function show(data) {
    Object.entries(render).forEach(([id, fn]) => {
      const key = JSON.stringify(sectionData[id](data));
      if (last[id] === key) return;
      const box = document.getElementById(id);
      if (!box) return;
      const hadFocus = box.contains(document.activeElement);
      box.replaceChildren(fn(data));
      last[id] = key;
      if (hadFocus) box.closest("section").querySelector("h2").setAttribute("tabindex", "-1");
    });
    const stamp = document.getElementById("refreshed");
    if (stamp) stamp.textContent = "Updated " + when(data.generated_at);
    document.body.dataset.refreshed = data.generated_at;
  }

  async function refresh(force) {
    if (paused && !force) return;
    try {
      show(await R.getJson("/queue/data.json"));
      document.getElementById("queue-error").textContent = "";
    } catch (error) {
      document.getElementById("queue-error").textContent = "Could not refresh: " + R.explain(error);
    }
  }

  const pause = document.getElementById("pause-refresh");
  if (pause) pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", paused ? "true" : "false");
    pause.textContent = paused ? "Resume updates" : "Pause updates";
  });

  show(JSON.parse(document.getElementById("queue-initial").textContent));
  setInterval(refresh, REFRESH_MS);
})();
