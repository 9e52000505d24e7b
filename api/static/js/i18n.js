// Every label of the screen comes from i18n/<lang>.json through t(); Vietnamese by default,
// English on request, the choice remembered in localStorage.

const STORE_KEY = 'ioc.lang';
const LOCALES = { vi: 'vi-VN', en: 'en-GB' };

let current = 'vi';
let tables = { vi: {}, en: {} };
const listeners = new Set();

export async function loadStrings(languages) {
  const entries = await Promise.all(
    languages.map(async (code) => {
      const response = await fetch(new URL(`i18n/${code}.json`, document.baseURI));
      if (!response.ok) throw new Error(`i18n/${code}.json: ${response.status}`);
      return [code, await response.json()];
    }),
  );
  tables = Object.fromEntries(entries);
}

export function initialLanguage(defaultLanguage) {
  const saved = localStorage.getItem(STORE_KEY);
  return saved && tables[saved] ? saved : defaultLanguage;
}

export function lang() {
  return current;
}

export function locale() {
  return LOCALES[current] || current;
}

export function setLang(code, { remember = true } = {}) {
  if (!tables[code]) return;
  current = code;
  if (remember) localStorage.setItem(STORE_KEY, code);
  document.documentElement.lang = code;
  translate(document);
  for (const fn of listeners) fn(code);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

// The label of `key` with {name} placeholders filled; the key itself when it has none (a
// missing label shows, rather than an empty space).
export function t(key, params) {
  const text = tables[current]?.[key] ?? tables.vi?.[key] ?? key;
  return params ? text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? params[name] : m)) : text;
}

// The label of `key` if the table has one, else `fallback` (units, history kinds).
export function tOr(key, fallback) {
  const text = tables[current]?.[key];
  return text === undefined ? fallback : text;
}

// name_vi / name_en (or title / title_en) of a record in the current language.
export function pick(record, base = 'name') {
  if (!record) return '';
  if (current === 'vi') return record[`${base}_vi`] ?? record[base] ?? record[`${base}_en`] ?? '';
  return record[`${base}_en`] || record[base] || record[`${base}_vi`] || '';
}

// Fill every element marked data-i18n (text), data-i18n-placeholder, -title or -aria-label.
export function translate(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const attr of ['placeholder', 'title', 'aria-label']) {
    const name = `data-i18n-${attr}`;
    for (const el of root.querySelectorAll(`[${name}]`)) el.setAttribute(attr, t(el.getAttribute(name)));
  }
}
