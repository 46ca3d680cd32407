// The items table's filters: each select keeps the rows whose data attribute equals its value
// (all when empty), the search box the rows whose text holds its words; the count follows.
(function () {
  var form = document.getElementById("filters");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#item-rows > tr"));
  var shown = document.getElementById("shown");
  function apply() {
    var selects = form.querySelectorAll("select");
    var words = form.elements.search.value.toLowerCase().split(/\s+/).filter(Boolean);
    var count = 0;
    rows.forEach(function (row) {
      var keep = Array.prototype.every.call(selects, function (select) {
        return select.value === "" || row.getAttribute("data-" + select.name) === select.value;
      });
      var text = row.textContent.toLowerCase();
      keep = keep && words.every(function (word) { return text.indexOf(word) !== -1; });
      row.hidden = !keep;
      if (keep) { count += 1; }
    });
    shown.textContent = String(count);
  }
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.hidden = false;
})();
