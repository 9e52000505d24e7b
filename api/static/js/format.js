// Numbers, units and times as people of the profile read them: the profile's time zone,
// the language's number and date conventions.

import { locale, t, tOr } from './i18n.js';

let timeZone = 'Asia/Ho_Chi_Minh';

export function setTimeZone(zone) {
  timeZone = zone || timeZone;
}

export function number(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const size = Math.abs(value);
  const digits = size >= 100 ? 0 : size >= 10 ? 1 : 2;
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(value);
}

export function unit(name) {
  if (!name) return '';
  return tOr(`unit.${name}`, name);
}

export function quantity(value, unitName) {
  const u = unit(unitName);
  if (!u) return number(value);
  return u.startsWith('/') || u.startsWith('%') || u === '‰' ? `${number(value)}${u}` : `${number(value)} ${u}`;
}

export function percent(value) {
  if (value === null || value === undefined) return '';
  const sign = value > 0 ? '+' : '';
  return `${sign}${new Intl.NumberFormat(locale(), { maximumFractionDigits: 1 }).format(value)}%`;
}

function parts(at, options) {
  const date = at instanceof Date ? at : new Date(at);
  if (Number.isNaN(date.getTime())) return '–';
  return new Intl.DateTimeFormat(locale(), { timeZone, hour12: false, ...options }).format(date);
}

export function time(at) {
  return parts(at, { hour: '2-digit', minute: '2-digit' });
}

export function timeSeconds(at) {
  return parts(at, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function dateTime(at) {
  if (!at) return '–';
  return parts(at, { day: '2-digit', month: '2-digit', year: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function fields(at) {
  const date = at instanceof Date ? at : new Date(at);
  const out = {};
  const format = new Intl.DateTimeFormat('en-GB', { timeZone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' });
  for (const part of format.formatToParts(date)) out[part.type] = part.value;
  return out;
}

// "14:05" today (in the profile's time zone), "14:05 28/11" another day.
export function dayTime(at) {
  if (!at || Number.isNaN(new Date(at).getTime())) return '–';
  const f = fields(at);
  const today = fields(new Date());
  const clock = `${f.hour}:${f.minute}`;
  return f.day === today.day && f.month === today.month && f.year === today.year ? clock : `${clock} ${f.day}/${f.month}`;
}

// An axis label: the date at midnight, the time otherwise.
export function axisTime(at) {
  const f = fields(at);
  return f.hour === '00' && f.minute === '00' ? `${f.day}/${f.month}` : `${f.hour}:${f.minute}`;
}

// "3 minutes ago" / "3 phút trước"; a full date beyond a day.
export function ago(at, now = Date.now()) {
  if (!at) return t('never');
  const seconds = Math.round((new Date(at).getTime() - now) / 1000);
  const size = Math.abs(seconds);
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  if (size < 45) return t('just_now');
  if (size < 3600) return rtf.format(Math.round(seconds / 60), 'minute');
  if (size < 86400) return rtf.format(Math.round(seconds / 3600), 'hour');
  return dayTime(at);
}
