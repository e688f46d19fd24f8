// The tool tabs (Image, Transcribe, Speech, Collections): click or arrow keys select one, showing its panel.

import { $ } from "./shared.js";

// `onOpen` maps a tab's id to what to run each time that tab is selected.
export function setupTabs(onOpen = {}) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const selectTab = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (onOpen[tab.id]) onOpen[tab.id]();
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
    });
  }
}
