/**
 * Critical results (危急值): the alerts in the user's scope, unacknowledged first, and the record
 * that a named clinician received the value (who, and what was done). The first acknowledgement
 * stands; a second one is refused by the hub and shown as such.
 */

import { api, personName } from '../api';
import { clear, h, toast } from '../dom';
import { lang, locale, t } from '../i18n';
import { studyRoute } from './worklist';

export interface AlertView {
  id: number;
  study_uid: string;
  patient_id: string;
  patient_name: string | null;
  origin: string;
  pool: string;
  source: string;
  reasons: { code?: string; zh?: string; en?: string }[];
  raised_at: string;
  acknowledged: boolean;
  acknowledged_at: string | null;
  acknowledged_by: string | null;
  acknowledged_by_name: string | null;
  acknowledgement_note: string | null;
  age_seconds: number;
}

function minutes(seconds: number): string {
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function renderAlerts(root: HTMLElement): () => void {
  const onlyOpen = h('input', { type: 'checkbox', name: 'unacknowledged', checked: true, onchange: () => reload() });
  const list = h('tbody');
  const count = h('span.count');
  clear(root);
  root.append(
    h('section.alerts-page', [
      h('div.filters', [h('h2', t('alerts')), h('label', [onlyOpen, ` ${t('unacknowledgedOnly')}`]), count]),
      h('table.alerts', [
        h('thead', h('tr', [t('patient'), t('origin'), t('reasons'), t('source'), t('raisedAt'), t('acknowledgement'), ''].map((l) => h('th', l)))),
        list,
      ]),
    ]),
  );

  function reasonText(a: AlertView): string {
    return a.reasons.map((r) => (lang() === 'zh' ? r.zh ?? r.en : r.en ?? r.zh) ?? r.code ?? '').join('；');
  }

  function acknowledge(alert: AlertView, cell: HTMLElement): void {
    const name = h('input', { name: 'ack-name', required: true, placeholder: t('ackNameHint'), maxLength: 100 });
    const note = h('input', { name: 'ack-note', placeholder: t('ackNoteHint'), maxLength: 2000 });
    const send = h('button.primary', {
      name: 'ack-submit',
      onclick: async () => {
        if (!name.value.trim()) return name.focus();
        send.disabled = true;
        try {
          await api('POST', `/alerts/${alert.id}/acknowledge`, {
            json: { name: name.value.trim(), note: note.value.trim() || null },
          });
          toast(t('acknowledged'));
          window.dispatchEvent(new Event('rdx:alerts-changed'));
          await reload();
        } catch (error) {
          send.disabled = false;
          toast((error as Error).message, 'error');
        }
      },
    }, t('acknowledge'));
    clear(cell);
    cell.append(h('div.ack-form', [name, note, send]));
    name.focus();
  }

  function row(alert: AlertView): HTMLTableRowElement {
    const action = h('td.action');
    const tr = h('tr', { className: alert.acknowledged ? 'acked' : 'open', dataset: { id: String(alert.id), study: alert.study_uid } }, [
      h('td', [h('strong', personName(alert.patient_name)), ` ${alert.patient_id}`]),
      h('td', alert.origin),
      h('td.crit', reasonText(alert)),
      h('td', t(`src_${alert.source}`)),
      h('td', `${new Date(alert.raised_at).toLocaleString(locale())}${alert.acknowledged ? '' : ` (${minutes(alert.age_seconds)})`}`),
      h('td.ack', alert.acknowledged
        ? `${alert.acknowledged_by_name ?? ''} · ${alert.acknowledged_at ? new Date(alert.acknowledged_at).toLocaleString(locale()) : ''}` +
          `${alert.acknowledgement_note ? ` · ${alert.acknowledgement_note}` : ''} (${alert.acknowledged_by ?? ''})`
        : t('unacknowledged')),
      action,
    ]);
    action.append(h('a', { href: studyRoute({ study_uid: alert.study_uid, modality: alert.source === 'ecg-analysis' ? 'ECG' : null }) }, t('open')));
    if (!alert.acknowledged) {
      action.append(' ', h('button', { name: 'acknowledge', onclick: () => acknowledge(alert, action) }, t('acknowledge')));
    }
    return tr;
  }

  async function reload(): Promise<void> {
    try {
      const page = await api<{ items: AlertView[]; total: number }>('GET', '/alerts', {
        query: { unacknowledged: onlyOpen.checked ? true : undefined, limit: 200 },
      });
      clear(list);
      if (!page.items.length) list.append(h('tr', h('td.empty', { colSpan: 7 }, t('noAlerts'))));
      for (const alert of page.items) list.append(row(alert));
      count.textContent = `${t('total')} ${page.total} ${t('items')}`;
      root.dataset.loadedAt = String(Date.now());
    } catch (error) {
      toast((error as Error).message, 'error');
    }
  }

  void reload();
  return () => undefined;
}
