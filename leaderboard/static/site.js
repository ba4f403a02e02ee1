// Sorting, filtering and copy buttons for the leaderboard pages. Plain JavaScript, no
// library and no network: the site works from a folder opened in a browser.
"use strict";

function cellValue(row, index, numeric) {
  const text = row.cells[index].getAttribute("data-value");
  if (!numeric) return text || "";
  const value = parseFloat(text);
  return Number.isFinite(value) ? value : null;
}

function sortBy(table, header) {
  const index = Array.prototype.indexOf.call(header.parentNode.children, header);
  const numeric = header.getAttribute("data-sort") === "number";
  const higher = header.getAttribute("data-direction") !== "lower";
  // First click: best first in the metric's declared direction; next click reverses.
  const bestFirst = !header.classList.contains("sorted-best");
  const descending = numeric ? (higher === bestFirst) : !bestFirst;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort(function (a, b) {
    const x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
    if (x === null && y === null) return 0;
    if (x === null) return 1;  // rows without a value stay last either way
    if (y === null) return -1;
    const order = numeric ? x - y : String(x).localeCompare(String(y));
    return descending ? -order : order;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  table.querySelectorAll("th").forEach(function (th) { th.classList.remove("sorted-asc", "sorted-desc", "sorted-best"); });
  header.classList.add(descending ? "sorted-desc" : "sorted-asc");
  if (bestFirst) header.classList.add("sorted-best");
}

function applyFilters() {
  const filters = Array.from(document.querySelectorAll("select[data-filter]"));
  document.querySelectorAll("table.board tbody tr").forEach(function (row) {
    const shown = filters.every(function (f) { return !f.value || row.getAttribute("data-" + f.getAttribute("data-filter")) === f.value; });
    row.hidden = !shown;
  });
}

document.querySelectorAll("table.board").forEach(function (table) {
  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(table, th); });
  });
});
document.querySelectorAll("select[data-filter]").forEach(function (s) { s.addEventListener("change", applyFilters); });
document.querySelectorAll("button.copy").forEach(function (button) {
  button.addEventListener("click", function () {
    const text = button.getAttribute("data-copy");
    const done = function () { button.textContent = "copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {  // file:// pages are not a secure context: select the command instead
      const range = document.createRange();
      range.selectNodeContents(button.previousElementSibling);
      const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
      button.textContent = "selected: Ctrl+C";
    }
  });
});
