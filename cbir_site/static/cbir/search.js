// Search as soon as an image is chosen with the button, dropped anywhere on the page or pasted
// (Ctrl+V): a dropped or pasted file goes into the form's file input, and the form is sent.
(function () {
  const form = document.querySelector("form[data-image-search]");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const carriesFiles = (event) => Array.from(event.dataTransfer ? event.dataTransfer.types : []).includes("Files");

  function searchWith(file) {
    if (!file) return;
    const chosen = new DataTransfer();
    chosen.items.add(file);
    input.files = chosen.files;
    form.requestSubmit();
  }

  input.addEventListener("change", () => {
    if (input.files.length) form.requestSubmit();
  });
  // After a search the form carries its image (the hidden "query"): another collection searches
  // again at once; a new number of results, with Enter or the button.
  const carried = form.querySelector("input[name=query]");
  const collection = form.querySelector("select[name=collection]");
  if (collection) {
    collection.addEventListener("change", () => {
      if (carried && carried.value) form.requestSubmit();
    });
  }
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    document.body.classList.add("dropping");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dropping");
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    document.body.classList.remove("dropping");
    searchWith(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = Array.from(event.clipboardData ? event.clipboardData.items : []).find(
      (entry) => entry.kind === "file" && entry.type.startsWith("image/"),
    );
    if (item) searchWith(item.getAsFile());
  });

  // A box dragged over the query's picture searches with that part of it: the box goes to the
  // server as fractions of the picture (left, top, right, bottom), which crops its preview.
  const picker = document.querySelector("[data-region-picker]");
  const region = form.querySelector("input[data-region]");
  if (!picker || !region) return;
  const picture = picker.querySelector("img");
  const MIN_SIDE = 8; // pixels of the preview each way, as the server asks (MIN_REGION_SIDE_PX)
  let start = null;
  let box = picker.querySelector("[data-region-box]");
  const previous = box ? box.getAttribute("style") : null;

  function at(event) {
    const rect = picture.getBoundingClientRect();
    const clamp = (value) => Math.min(Math.max(value, 0), 1);
    return { x: clamp((event.clientX - rect.left) / rect.width), y: clamp((event.clientY - rect.top) / rect.height) };
  }
  function edges(end) {
    return [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)];
  }
  function show([left, top, right, bottom]) {
    if (!box) {
      box = document.createElement("div");
      box.className = "region";
      picker.appendChild(box);
    }
    box.style.left = `${100 * left}%`;
    box.style.top = `${100 * top}%`;
    box.style.width = `${100 * (right - left)}%`;
    box.style.height = `${100 * (bottom - top)}%`;
  }
  function searchWithin(box) { // the form sends the region with the carried query
    region.value = box.map((edge) => edge.toFixed(4)).join(",");
    region.disabled = false;
    form.requestSubmit();
  }
  function cancel() {
    start = null;
    if (box && previous) box.setAttribute("style", previous);
    else if (box) {
      box.remove();
      box = null;
    }
  }
  picker.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    picker.setPointerCapture(event.pointerId);
    start = at(event);
  });
  picker.addEventListener("pointermove", (event) => {
    if (start) show(edges(at(event)));
  });
  picker.addEventListener("pointerup", (event) => {
    if (!start) return;
    const [left, top, right, bottom] = edges(at(event));
    start = null;
    const big = (right - left) * picture.naturalWidth >= MIN_SIDE && (bottom - top) * picture.naturalHeight >= MIN_SIDE;
    if (!big) return cancel(); // a click, not a box
    searchWithin([left, top, right, bottom]);
  });
  picker.addEventListener("pointercancel", cancel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && start) cancel();
  });

  // The keyboard's way: with the picture focused, an arrow key or Enter puts a box on it (the
  // region searched with, or the middle half), arrows move it, Shift with arrows resizes it,
  // Enter searches with it, Escape takes it back.
  const STEP = 0.05;
  const MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  let keyed = null;
  picker.addEventListener("keydown", (event) => {
    const move = MOVES[event.key];
    if (!keyed) {
      if (!move && event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      const carried = (picker.dataset.region || "").split(",").map(Number);
      keyed = carried.length === 4 && carried.every(Number.isFinite) ? carried : [0.25, 0.25, 0.75, 0.75];
      return show(keyed);
    }
    if (event.key === "Escape") {
      keyed = null;
      return cancel();
    }
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      return searchWithin(keyed);
    }
    if (!move) return;
    event.preventDefault();
    let [left, top, right, bottom] = keyed;
    const [dx, dy] = move.map((d) => d * STEP);
    if (event.shiftKey) { // the right and bottom edges, never past the left and top ones
      right = Math.min(Math.max(right + dx, left + STEP), 1);
      bottom = Math.min(Math.max(bottom + dy, top + STEP), 1);
    } else { // the whole box, kept on the picture
      const x = Math.min(Math.max(dx, -left), 1 - right);
      const y = Math.min(Math.max(dy, -top), 1 - bottom);
      [left, top, right, bottom] = [left + x, top + y, right + x, bottom + y];
    }
    keyed = [left, top, right, bottom];
    show(keyed);
  });
})();
