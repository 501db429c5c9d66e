/* skymosaic report viewer: OpenSeadragon deep zoom, overlays, cursor readout, panels.
 * Data: window.SKYMOSAIC_REPORT (report/data.js). Coordinates: "image" = DZI pixels
 * (x right, y down, pixel centres at i + 0.5); FITS pixels are 0-based, row 0 at the bottom.
 * Over http (skymosaic view / run --serve) the page also polls status.json for progress. */
(function () {
  "use strict";
  const R = window.SKYMOSAIC_REPORT || null;
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  const api = { state: { maxLevelLoaded: -1, tilesLoaded: 0, selected: null, ready: false } };
  window.skymosaicReport = api;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function num(v, d) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return esc(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(d || 3) : v.toFixed(d === undefined ? 4 : d);
  }
  function linked(v) {  // one number when every channel has it (a linked stretch)
    return Array.isArray(v) && v.every((x) => x === v[0]) ? v[0] : v;
  }
  function stretchText(s) {
    if (!s) return "–";
    const calibrated = Array.isArray(s.scale) && s.scale.some((x) => x !== 1);
    return "linked " + esc(s.curve || "asinh") + (calibrated ? " after colour calibration" : "") +
      ", black " + list(linked(s.black), 1) + ", white " + list(linked(s.white), 1) +
      (typeof s.sky === "number" ? ", sky " + num(s.sky, 1) : "");
  }
  function list(v, d) { return Array.isArray(v) ? v.map((x) => Array.isArray(x) ? "[" + list(x, d) + "]" : num(x, d)).join(", ") : num(v, d); }
  function bytes(b) {
    if (b === null || b === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let k = 0;
    while (b >= 1024 && k < u.length - 1) { b /= 1024; k++; }
    return b.toFixed(k ? 1 : 0) + " " + u[k];
  }
  function table(rows) {
    return "<table>" + rows.filter((r) => r).map((r) => "<tr><th>" + esc(r[0]) + "</th><td>" + r[1] + "</td></tr>").join("") + "</table>";
  }
  const CH = (n) => (n === 3 ? ["R", "G", "B"] : n === 1 ? [""] : Array.from({ length: n }, (_, k) => "c" + k));

  /* ---- sky and values at a FITS pixel ------------------------------------------ */
  function skyAt(x, y) {
    const g = R.sky, nx = g.nx, ny = g.ny, v = g.v;
    const fx = x / g.step, fy = y / g.step; // extrapolated half a pixel beyond the nodes
    const i0 = Math.min(Math.max(Math.floor(fx), 0), nx - 2), j0 = Math.min(Math.max(Math.floor(fy), 0), ny - 2);
    const tx = fx - i0, ty = fy - j0, w = [(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty];
    const idx = [(j0 * nx + i0) * 3, (j0 * nx + i0 + 1) * 3, ((j0 + 1) * nx + i0) * 3, ((j0 + 1) * nx + i0 + 1) * 3];
    const p = [0, 0, 0];
    for (let k = 0; k < 4; k++) for (let c = 0; c < 3; c++) p[c] += w[k] * v[idx[k] + c];
    const n = Math.hypot(p[0], p[1], p[2]);
    let ra = Math.atan2(p[1] / n, p[0] / n) * 180 / Math.PI;
    if (ra < 0) ra += 360;
    return [ra, Math.asin(Math.max(-1, Math.min(1, p[2] / n))) * 180 / Math.PI];
  }
  function sexa(deg, hours) {
    let v = hours ? deg / 15 : Math.abs(deg);
    const sign = hours ? "" : deg < 0 ? "−" : "+";
    let a = Math.floor(v), m = Math.floor((v - a) * 60), s = ((v - a) * 60 - m) * 60;
    const dp = hours ? 2 : 1;
    if (s.toFixed(dp) >= 60) { s = 0; m += 1; }
    if (m >= 60) { m = 0; a += 1; }
    return sign + String(a).padStart(2, "0") + (hours ? "h" : "°") + String(m).padStart(2, "0") + (hours ? "m" : "′")
      + s.toFixed(dp).padStart(3 + dp, "0") + (hours ? "s" : "″");
  }
  const chunks = {}, waiting = {};
  window.SKYMOSAIC_VALUES = function (key, h, w, b64) {
    const bin = atob(b64), buf = new Uint8Array(bin.length);
    for (let k = 0; k < bin.length; k++) buf[k] = bin.charCodeAt(k);
    chunks[key] = { h: h, w: w, data: new Float32Array(buf.buffer) };
    (waiting[key] || []).forEach((f) => f());
    delete waiting[key];
  };
  function valueAt(px, py) { // FITS pixel -> Promise of [values per channel] (null: outside)
    const V = R.values;
    return new Promise((resolve) => {
      if (px < 0 || py < 0 || px >= R.image.width || py >= R.image.height) return resolve(null);
      const bx = Math.floor(px / V.factor), by = Math.floor(py / V.factor);
      const key = Math.floor(bx / V.chunk) + "_" + Math.floor(by / V.chunk);
      const read = () => {
        const c = chunks[key], ix = bx % V.chunk, iy = by % V.chunk, out = [];
        for (let ch = 0; ch < V.channels; ch++) out.push(c.data[ch * c.h * c.w + iy * c.w + ix]);
        resolve(out);
      };
      if (chunks[key]) return read();
      if (!waiting[key]) {
        waiting[key] = [];
        const s = document.createElement("script");
        s.src = V.url + key + ".js";
        s.onerror = () => resolve(null);
        document.head.appendChild(s);
      }
      waiting[key].push(read);
    });
  }
  api.skyAt = skyAt;
  api.valueAt = valueAt;

  /* ---- panels --------------------------------------------------------------------- */
  function summaryPanel() {
    const s = R.run, o = s.output || {}, f = s.frames || {}, ph = s.photometry || {};
    const timings = Object.entries(s.timings_s || {}).map(([k, v]) => esc(k) + " " + v.toFixed(2) + " s").join(", ");
    const steps = Object.entries((s.backend || {}).steps || {}).map(([k, v]) => esc(k) + ": " + Object.entries(v).map(([b, n]) => esc(b) + " " + n).join(" / ")).join("; ");
    const shape = o.shape ? o.shape[1] + " × " + o.shape[0] + " px" : "–";
    $("summary").innerHTML = table([
      ["status", esc(s.status || "")], ["mode", esc(s.mode || "")],
      ["inputs found", num(f.found)], ["frames used", num(f.used)], ["frames rejected", num(f.rejected)],
      ["master tiles", num(s.n_tiles)],
      ["mosaic", shape + ", " + num(o.channels) + " channel(s)"],
      ["scale", num(o.pixel_scale_arcsec, 3) + "″/px, " + esc(o.projection || "") + ", rotation " + num(o.rotation_deg, 2) + "°"],
      ["centre", o.center_deg ? sexa(o.center_deg[0], true) + " " + sexa(o.center_deg[1], false) : "–"],
      ["coverage", o.coverage_fraction !== undefined ? (100 * o.coverage_fraction).toFixed(1) + " % of pixels, depth ≤ " + num(o.max_depth) : "–"],
      ["photometry", esc(ph.status || "off") + (ph.n_overlaps !== undefined ? ", " + ph.n_overlaps + " overlaps, gains " + list(ph.gain_range, 4) + ", surface " + esc(ph.sky_surface || "") : "")],
      ["times", timings || "–"], ["peak memory", bytes(s.peak_memory_bytes)],
      ["backend", esc((s.backend || {}).backend || "") + (steps ? " (" + steps + ")" : "") + ", scheduler " + esc(s.scheduler || "")],
      ["stretch", stretchText(R.image.stretch)],
      ["readout", R.values.factor > 1 ? "values are " + R.values.factor + " × " + R.values.factor + " px means" : "values at full resolution"],
      ["skymosaic", esc(R.skymosaic) + ", report " + esc(R.generated)],
    ]);
    $("config").textContent = R.config || "(config.toml not found)";
    $("warnings").innerHTML = R.warnings.length ? "<ul>" + R.warnings.map((w) => "<li><b>" + esc(w.level) + "</b> " + esc(w.message) + " <small>(" + esc(w.logger) + ", " + esc(w.time) + ")</small></li>").join("") + "</ul>" : "none";
    $("rejected").innerHTML = R.rejected.length ? "<ul>" + R.rejected.map((r) => "<li><b>" + esc(r.name) + "</b>: " + esc(r.reason) + (r.outline ? "" : " <small>(no outline: no WCS)</small>") + "</li>").join("") + "</ul>" : "none";
    $("status").textContent = s.status === "ok" ? "finished" : s.status || "";
  }

  function perChannel(label, values, d) {
    if (!values) return null;
    const names = CH(values.length);
    return [label, values.map((v, k) => (names[k] ? "<b>" + names[k] + "</b> " : "") + (Array.isArray(v) ? "[" + list(v, d) + "]" : num(v, d))).join("<br>")];
  }
  function frameRows(f) {
    const q = f.quality || {}, st = f.stats || {};
    return [["file", esc(f.path || f.name)], ["exposure", num(f.exposure) + " s"], ["filter", esc(f.filter || "–")],
      ["object", esc(f.object || "–")], ["night", esc(f.night || "–")], ["date", esc(f.date_obs || "–")],
      ["WCS", esc(f.wcs || "–")], ["used", f.used ? "yes" : "no"], ["master tile", esc(f.tile || "–")],
      perChannel("frame gain (solved over the frame overlaps)", f.frame_gain),
      perChannel("frame sky surface", f.frame_surface, 4),
      perChannel("stack gain", f.stack_gain), perChannel("stack offset", f.stack_offset, 2),
      f.rejected_pixels !== undefined ? ["stack rejections", num(f.rejected_pixels) + " px (" + num(100 * (f.rejected_fraction || 0), 2) + " %)"] : null,
      ["stars", num(q.n_stars)], ["FWHM", num(q.fwhm, 2) + " px"], ["elongation", num(q.elongation, 3)],
      ["background", num(q.background, 2)], ["noise", num(q.noise, 3)], perChannel("noise / channel", st.noise, 3)];
  }
  function inputByName(name) { return R.inputs.find((i) => i.name === name); }
  function describe(hit) {
    const o = hit.obj;
    let html = "";
    if (hit.layer === "inputs") {
      html = "<h3>" + esc(o.name) + " <small>(" + (o.kind === "tile" ? "master tile" : "single frame") + ")</small></h3>" + table([
        perChannel("gain", o.gain), perChannel("offset", o.offset, 3), perChannel("sky surface", o.surface, 4),
        o.coverage_renorm !== undefined ? ["coverage renorm", num(o.coverage_renorm)] : null,
        o.n_frames !== undefined ? ["frames", num(o.n_frames) + ", " + num(o.exposure_sum) + " s in all"] : null,
        ...(o.frame ? frameRows(o.frame) : []),
      ]);
      if (o.frames) {
        const solved = o.frames.some((n) => (R.frames.find((x) => x.name === n) || {}).frame_gain);
        html += "<table class='frames'><tr><th>frame</th>" + (solved ? "<th>frame gain</th>" : "") + "<th>stack gain</th><th>rejected px</th></tr>" + o.frames.map((n) => {
          const f = R.frames.find((x) => x.name === n) || {};
          return "<tr><td>" + esc(n) + "</td>" + (solved ? "<td>" + list(f.frame_gain, 4) + "</td>" : "") + "<td>" + list(f.stack_gain, 3) + "</td><td>" + num(f.rejected_pixels) + "</td></tr>";
        }).join("") + "</table>";
      }
    } else if (hit.layer === "frames") {
      const inp = inputByName(o.tile ? o.tile + ".fits" : o.name);
      html = "<h3>" + esc(o.name) + " <small>(frame)</small></h3>" + table([
        ...frameRows(o), inp ? perChannel("coadd gain (" + (o.tile ? "its tile" : "own") + ")", inp.gain) : null]);
    } else if (hit.layer === "rejected") {
      html = "<h3>" + esc(o.name) + " <small>(rejected)</small></h3>" + table([["file", esc(o.path)], ["reason", esc(o.reason)]]);
    } else if (hit.layer === "seams") {
      html = "<h3>overlap " + esc(o.a) + " / " + esc(o.b) + "</h3>" + table([
        perChannel("residual sky step", o.sky_step, 3), ["fit status", esc(o.status.join(", "))],
        perChannel("robust weight", o.robust_weight, 3), perChannel("pixels used", o.n_used)]);
    }
    $("selection").innerHTML = html;
  }

  /* ---- overlays --------------------------------------------------------------------- */
  const layers = {};
  let svg = null, viewer = null, highlight = null, coverageItem = null;
  function area(poly) { let a = 0; for (let k = 0; k < poly.length; k++) { const p = poly[k], q = poly[(k + 1) % poly.length]; a += p[0] * q[1] - q[0] * p[1]; } return Math.abs(a) / 2; }
  function inside(poly, x, y) {
    let c = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) c = !c;
    }
    return c;
  }
  function polygon(g, pts, cls, fill) {
    const p = document.createElementNS(SVGNS, "polygon");
    p.setAttribute("points", pts.map((q) => q[0] + "," + q[1]).join(" "));
    p.setAttribute("class", cls);
    p.setAttribute("vector-effect", "non-scaling-stroke");
    if (fill) p.setAttribute("fill", fill);
    g.appendChild(p);
    return p;
  }
  function stepColour(t) { return "hsl(" + (120 * (1 - Math.min(Math.max(t, 0), 1))).toFixed(0) + ",90%,50%)"; }
  function buildLayers() {
    svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("id", "overlay");
    viewer.canvas.appendChild(svg);
    const root = document.createElementNS(SVGNS, "g");
    svg.appendChild(root);
    const add = (name, items, cls, fillOf) => {
      const g = document.createElementNS(SVGNS, "g");
      g.setAttribute("id", "layer-" + name);
      root.appendChild(g);
      layers[name] = { g: g, items: [] };
      items.forEach((obj) => {
        const pts = name === "seams" ? obj.polygon : obj.outline;
        if (!pts || pts.length < 3) return;
        layers[name].items.push({ obj: obj, pts: pts, area: area(pts), el: polygon(g, pts, cls, fillOf ? fillOf(obj) : null) });
      });
    };
    const steps = R.pairs.map((p) => p.max_step).filter((s) => s !== null).sort((a, b) => a - b);
    const top = steps.length ? steps[Math.min(steps.length - 1, Math.floor(0.95 * steps.length))] || steps[steps.length - 1] : 1;
    api.state.seamScale = top;
    add("seams", R.pairs, "seam", (p) => p.max_step === null ? "rgba(128,128,128,0.4)" : stepColour(p.max_step / (top || 1)));
    add("frames", R.frames, "frame");
    add("inputs", R.inputs, "input");
    add("rejected", R.rejected, "rejected");
    highlight = polygon(root, [[0, 0], [0, 0], [0, 0]], "highlight");
    api.root = root;
    $("legend").innerHTML = "<span class='sw input'></span>inputs <span class='sw frame'></span>frames <span class='sw rejected'></span>rejected "
      + "<span class='grad'></span> seam step 0 … " + num(top, 3) + " " + esc(R.image.bunit)
      + (R.coverage ? " · coverage 0 … " + num(R.coverage.max) + " frames" : "");
  }
  function placeOverlay() {
    if (!svg || !viewer.world.getItemCount()) return;
    const vp = viewer.viewport, W = R.image.width;
    const p0 = vp.pixelFromPoint(new OpenSeadragon.Point(0, 0), true), p1 = vp.pixelFromPoint(new OpenSeadragon.Point(1, 0), true);
    const s = (p1.x - p0.x) / W;
    api.root.setAttribute("transform", "translate(" + p0.x + "," + p0.y + ") scale(" + s + ")");
  }
  function toggle(name, on) {
    if (name === "coverage") {
      if (coverageItem) coverageItem.setOpacity(on ? 0.6 : 0);
    } else if (layers[name]) {
      layers[name].g.style.display = on ? "" : "none";
    }
    api.state["layer_" + name] = on;
  }
  let lastClick = null, cycle = 0;
  function hitsAt(x, y) {
    const out = [];
    ["rejected", "inputs", "frames", "seams"].forEach((name) => {
      if (!layers[name] || layers[name].g.style.display === "none") return;
      layers[name].items.forEach((it) => { if (inside(it.pts, x, y)) out.push({ layer: name, obj: it.obj, pts: it.pts, area: it.area }); });
    });
    return out.sort((a, b) => a.area - b.area);
  }
  function select(hit) {
    api.state.selected = hit ? { layer: hit.layer, name: hit.obj.name || hit.obj.a + "/" + hit.obj.b } : null;
    if (!hit) { highlight.setAttribute("points", "0,0 0,0 0,0"); return; }
    highlight.setAttribute("points", hit.pts.map((q) => q[0] + "," + q[1]).join(" "));
    describe(hit);
  }
  api.selectAt = function (x, y) { // image coordinates; returns the selected hit
    const hits = hitsAt(x, y);
    const same = lastClick && Math.hypot(lastClick[0] - x, lastClick[1] - y) < 2;
    cycle = same ? cycle + 1 : 0;
    lastClick = [x, y];
    const hit = hits.length ? hits[cycle % hits.length] : null;
    select(hit);
    return api.state.selected;
  };
  api.selectInput = function (name) {
    const it = (layers.inputs.items.find((i) => i.obj.name === name));
    if (it) select({ layer: "inputs", obj: it.obj, pts: it.pts, area: it.area });
    return api.state.selected;
  };

  /* ---- viewer ----------------------------------------------------------------------- */
  // the mosaic is the first world item (the coverage overlay is a second one)
  const mainImage = () => viewer.world.getItemAt(0);
  api.mainImage = mainImage;
  function readout(pos) {
    const img = mainImage().viewerElementToImageCoordinates(pos);
    const H = R.image.height, W = R.image.width;
    if (img.x < 0 || img.y < 0 || img.x >= W || img.y >= H) { $("readout").innerHTML = "&nbsp;"; return; }
    const px = Math.floor(img.x), py = H - 1 - Math.floor(img.y);
    const sky = skyAt(img.x - 0.5, H - 0.5 - img.y);
    const text = "x " + px + ", y " + py + " · RA " + sexa(sky[0], true) + " Dec " + sexa(sky[1], false)
      + " (" + sky[0].toFixed(5) + "°, " + sky[1].toFixed(5) + "°)";
    $("readout").textContent = text;
    valueAt(px, py).then((v) => {
      if (!v) return;
      const names = CH(v.length);
      $("readout").textContent = text + " · " + v.map((x, k) => (names[k] ? names[k] + " " : "") + (Number.isNaN(x) ? "no data" : num(x, 2))).join(" ")
        + (R.values.factor > 1 ? " (" + R.values.factor + "×" + R.values.factor + " mean)" : "") + (R.image.bunit ? " " + R.image.bunit : "");
    });
  }
  function startViewer() {
    viewer = OpenSeadragon({
      id: "viewer", tileSources: R.image.tile_source, showNavigationControl: false, drawer: "canvas",
      maxZoomPixelRatio: 16, imageSmoothingEnabled: false, crossOriginPolicy: false, visibilityRatio: 0.2,
      animationTime: 0.4, gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    api.viewer = viewer;
    viewer.addHandler("tile-loaded", (e) => {
      api.state.tilesLoaded += 1;
      api.state.maxLevelLoaded = Math.max(api.state.maxLevelLoaded, e.tile.level);
    });
    viewer.addHandler("open", () => {
      buildLayers();
      if (R.coverage) {
        viewer.addSimpleImage({ url: R.coverage.url, x: 0, y: 0, width: R.coverage.width, opacity: 0,
          success: (e) => { coverageItem = e.item; toggle("coverage", $("ov-coverage").checked); } });
      }
      ["inputs", "frames", "seams", "coverage", "rejected"].forEach((n) => {
        const box = $("ov-" + n);
        toggle(n, box.checked);
        box.addEventListener("change", () => toggle(n, box.checked));
      });
      placeOverlay();
      api.state.ready = true;
    });
    ["animation", "update-viewport", "resize", "animation-finish"].forEach((ev) => viewer.addHandler(ev, placeOverlay));
    viewer.addHandler("canvas-click", (e) => {
      if (!e.quick) return;
      const img = mainImage().viewerElementToImageCoordinates(e.position);
      api.selectAt(img.x, img.y);
    });
    new OpenSeadragon.MouseTracker({ element: viewer.canvas, moveHandler: (e) => readout(e.position) });
    $("zoom-in").onclick = () => viewer.viewport.zoomBy(2);
    $("zoom-out").onclick = () => viewer.viewport.zoomBy(0.5);
    $("zoom-home").onclick = () => viewer.viewport.goHome();
    $("zoom-pixel").onclick = () => viewer.viewport.zoomTo(mainImage().imageToViewportZoom(1));
  }

  /* ---- live progress (http only) ------------------------------------------------------ */
  function poll() {
    fetch("status.json?t=" + Date.now(), { cache: "no-store" }).then((r) => r.ok ? r.json() : null).then((s) => {
      if (!s) return;
      $("progress-box").hidden = false;
      $("progress").innerHTML = Object.entries(s.phases || {}).map(([name, p]) => {
        const frac = p.total ? Math.min(1, p.done / p.total) : 0;
        return "<div class='phase'><span>" + esc(name) + "</span><progress max='1' value='" + frac.toFixed(3) + "'></progress> "
          + num(p.done) + "/" + num(p.total) + (p.ended ? " ✓" : "") + "</div>";
      }).join("") + "<div>" + esc(s.state || "") + (s.message ? ": " + esc(s.message) : "") + "</div>";
      if (s.partial) { const im = $("partial"); im.hidden = false; if (im.dataset.v !== String(s.partial)) { im.dataset.v = s.partial; im.src = "partial.png?v=" + s.partial; } }
      if (!R && s.report_ready) { location.reload(); return; }
      if (R && s.report_ready && s.report_generated && s.report_generated !== R.generated) { location.reload(); return; }
      if (s.state !== "done" || !R) setTimeout(poll, 1500);
    }).catch(() => setTimeout(poll, 3000));
  }

  if (R) { summaryPanel(); startViewer(); }
  else { $("summary").textContent = "The run is still going: the report appears when it ends."; $("status").textContent = "running"; }
  if (location.protocol.startsWith("http")) poll();
})();
