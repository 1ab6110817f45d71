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
})();
