// glue: menus -> heatmap and the clicked cell's items (built only for that cell), click -> that cell
const D = JSON.parse(document.getElementById("wpatch-data").textContent);
const measure = document.getElementById("measure"), group = document.getElementById("group");
const plot = document.getElementById("matrix"), out = document.getElementById("cell");
const label = Object.fromEntries(D.measures);
let clicked = null;  // the clicked cell: {s, t, all}
function groupSize() {
  return group.value === "all" ? D.items.item_id.length : (D.groups[group.value] || []).length;
}
function draw() {
  const trace = (D.traces[group.value] || {})[measure.value];
  const mark = clicked ? [{type: "rect", x0: clicked.t - 0.5, x1: clicked.t + 0.5, y0: clicked.s - 0.5,
    y1: clicked.s + 0.5, line: {color: "#000", width: 3}}] : [];
  Plotly.react(plot, trace ? [trace] : [], {
    title: {text: `${label[measure.value] || measure.value}, group ${group.value}, ${D.model}, ${groupSize()} items`,
      font: {size: 15}, x: 0, xref: "paper", xanchor: "left", y: 0.92, yanchor: "middle"},
    xaxis: {title: {text: "target layer (recipient block)"}, dtick: 1},
    yaxis: {title: {text: "source layer (donor block)"}, dtick: 1, autorange: "reversed"},
    margin: {t: 70}, shapes: mark});
}
function cellText(tag, text) { const e = document.createElement(tag); e.textContent = text; return e; }
function timeAxis(seconds) {  // ticks under a spectrogram of `seconds`, at most 6, on a round step
  const axis = document.createElement("div"); axis.className = "axis";
  const step = [0.1, 0.2, 0.5, 1, 2, 5, 10].find(s => seconds / s <= 5) || 10;
  for (let k = 0; k * step <= seconds + 1e-9; k++) {
    const tick = cellText("span", k === 0 ? "0 s" : +(k * step).toFixed(1));
    tick.style.left = 100 * k * step / seconds + "%"; axis.appendChild(tick);
  }
  return axis;
}
function clip(name, frames, window) {
  const box = document.createElement("td");
  if (!name) return box;
  const audio = document.createElement("audio");
  audio.controls = true; audio.preload = "metadata"; audio.src = "clips/" + name;  // metadata: its duration
  const length = document.createElement("span"); length.className = "length";  // a clip under 1 s plays as "0:00"
  audio.addEventListener("loadedmetadata", () => { length.textContent = audio.duration.toFixed(2) + " s"; });
  const mel = document.createElement("div"); mel.className = "mel";
  const img = document.createElement("img"); img.loading = "lazy";
  img.src = "clips/" + name.replace(/\.[^.]+$/, ".png"); mel.appendChild(img);
  if (window) {  // encoder frames are 20 ms, log-mel frames 10 ms
    const mark = document.createElement("span"); mark.className = "window";
    mark.style.left = Math.min(100, 200 * window[0] / frames) + "%";
    mark.style.width = Math.max(0, Math.min(100, 200 * window[1] / frames) - 200 * window[0] / frames) + "%";
    mel.appendChild(mark);
  }
  box.append(audio, length, mel, timeAxis(frames / 100));
  return box;
}
function showCell() {
  out.replaceChildren();
  const cell = clicked && D.cells[clicked.s + "," + clicked.t];
  if (!cell) return;
  const {s, t, all} = clicked;
  const members = group.value === "all" ? null : new Set(D.groups[group.value] || []);
  const picked = cell.item.map((item, k) => k).filter(k => !members || members.has(cell.item[k]));
  const shown = all ? picked : picked.slice(0, D.shown_first);
  document.getElementById("cell-title").textContent =
    `source layer ${s} → target layer ${t}, group ${group.value}: ${picked.length} items`;
  const table = document.createElement("table"), head = document.createElement("tr");
  const names = D.measures.map(m => m[0]);
  const I = D.items, heard = I.source_heard ? ["source clip heard as", "target clip heard as"] : [];
  ["item", "source word", "target word", "voice", "recognised", "transcript", ...names, ...heard,
   ...(I.source_clip ? ["source clip", "target clip"] : [])].forEach(n => head.appendChild(cellText("th", n)));
  head.children[6 + names.indexOf(measure.value)]?.classList.add("shown");  // the heatmap's measure
  table.appendChild(head);
  for (const k of shown) {
    const i = cell.item[k], row = document.createElement("tr");
    [I.item_id[i], I.source_word[i], I.target_word[i], I.voice[i], I.recognised[i] ? "yes" : "no",
     D.transcripts[cell.transcript[k]], ...names.map(m => cell[m][k] === null ? "" : cell[m][k]),
     ...(heard.length ? [I.source_heard[i] ?? "", I.target_heard[i] ?? ""] : [])]
      .forEach(v => row.appendChild(cellText("td", v)));
    const window = cell.window ? cell.window[k] : null;
    if (I.source_clip) row.append(clip(I.source_clip[i], I.source_frames[i], window),
                                  clip(I.target_clip[i], I.target_frames[i], window));
    table.appendChild(row);
  }
  out.appendChild(table);
  if (shown.length < picked.length) {
    const more = cellText("button", `show all ${picked.length} items`);
    more.onclick = () => { clicked.all = true; showCell(); };
    out.appendChild(more);
  }
}
measure.onchange = group.onchange = () => { draw(); showCell(); };
draw();
plot.on("plotly_click", event => {
  clicked = {s: event.points[0].y, t: event.points[0].x, all: false};
  draw(); showCell();
});
