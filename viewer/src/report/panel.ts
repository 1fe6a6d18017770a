/** The report beside the images: template, autosaved draft, sign, and escalation (会诊). */

import { ApiError, api, type ReportContent, type ReportView, type TemplateView } from '../api';
import { h, toast } from '../dom';
import { lang, locale, t } from '../i18n';

const AUTOSAVE_MS = 1200;
const RENEW_MS = 120_000;

export interface ReportPanel {
  element: HTMLElement;
  sign(): Promise<void>;
  dispose(): Promise<void>;
}

export async function reportPanel(
  studyUid: string,
  modality: string,
  onDone: (what: 'signed' | 'escalated') => void,
): Promise<ReportPanel> {
  let holder = false;
  try {
    await api('POST', `/worklist/${studyUid}/claim`);
    holder = true;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    toast(`${t('claimFailed')}: ${error.detail}`, 'error');
  }
  const [report, templates] = await Promise.all([
    api<ReportView>('GET', `/studies/${studyUid}/report`),
    api<TemplateView[]>('GET', '/report-templates'),
  ]);
  const signed = report.status !== null && report.status !== 'draft';
  const editable = holder && !signed;
  const content: ReportContent = {
    findings: '',
    impression: '',
    ...(signed ? report.versions.at(-1)?.content : report.draft?.content),
  };
  let template = report.draft?.template ?? report.template;
  let saveTimer: number | undefined;
  let saving: Promise<unknown> = Promise.resolve();
  let dirty = false;
  let savedOnce = Boolean(report.draft?.saved);

  const state = h('span.save-state', { role: 'status' }, savedOnce ? t('saved') : '');
  const findings = h('textarea', { name: 'findings', rows: 10, value: content.findings, disabled: !editable });
  const impression = h('textarea', { name: 'impression', rows: 5, value: content.impression, disabled: !editable });
  const templateSelect = h(
    'select',
    { name: 'template', disabled: !editable },
    templates
      .filter((tpl) => tpl.modalities.includes(modality) || tpl.code === template)
      .map((tpl) => h('option', { value: tpl.code, selected: tpl.code === template }, lang() === 'zh' ? tpl.name : tpl.name_en)),
  );

  function changed(): void {
    if (!editable) return;
    dirty = true;
    state.textContent = t('unsaved');
    window.clearTimeout(saveTimer);
    saveTimer = window.setTimeout(save, AUTOSAVE_MS);
  }

  async function save(): Promise<void> {
    if (!editable || !dirty) return;
    dirty = false;
    content.findings = findings.value;
    content.impression = impression.value;
    state.textContent = t('saving');
    saving = api('PUT', `/studies/${studyUid}/report/draft`, { json: { template, content } })
      .then(() => {
        savedOnce = true;
        state.textContent = `${t('saved')} ${new Date().toLocaleTimeString(locale())}`;
      })
      .catch((error: Error) => {
        dirty = true;
        state.textContent = t('unsaved');
        toast(error.message, 'error');
      });
    await saving;
  }

  findings.addEventListener('input', changed);
  impression.addEventListener('input', changed);
  templateSelect.addEventListener('change', () => {
    template = templateSelect.value;
    changed();
  });

  // Autosave renews nothing: keep the lease while the reader has the study open.
  const renewTimer = editable
    ? window.setInterval(() => api('POST', `/worklist/${studyUid}/renew`).catch(() => undefined), RENEW_MS)
    : undefined;

  async function sign(): Promise<void> {
    if (!editable) return;
    window.clearTimeout(saveTimer);
    await saving;
    content.findings = findings.value;
    content.impression = impression.value;
    signButton.disabled = true;
    try {
      const answer = await api<ReportView>('POST', `/studies/${studyUid}/report/sign`, { json: { template, content } });
      toast(`${t('signed')} ${answer.verify_code ? `· ${t('verifyCode')} ${answer.verify_code}` : ''}`);
      finished = true;
      onDone('signed');
    } catch (error) {
      signButton.disabled = false;
      toast((error as Error).message, 'error');
    }
  }

  const signButton = h('button.primary', { name: 'sign', disabled: !editable, onclick: sign, title: 'Ctrl+Enter' }, t('sign'));
  const escalateButton = h('button', { name: 'escalate', disabled: !editable, onclick: () => escalate() }, t('escalate'));
  let finished = false;

  function escalate(): void {
    const question = h('textarea', { name: 'question', rows: 3, required: true });
    const opinion = h('textarea', { name: 'opinion', rows: 3, value: impression.value });
    const dialog = h('dialog.escalate', [
      h('h3', t('escalate')),
      h('label', [t('question'), question]),
      h('label', [t('opinion'), opinion]),
      h('div.actions', [
        h('button', { onclick: () => dialog.close() }, t('cancel')),
        h('button.primary', {
          onclick: async () => {
            if (!question.value.trim()) return question.focus();
            try {
              await save();
              await api('POST', `/studies/${studyUid}/consultations`, {
                json: { question: question.value.trim(), opinion: opinion.value.trim() || null },
              });
              dialog.close();
              toast(t('escalated'));
              finished = true;
              onDone('escalated');
            } catch (error) {
              toast((error as Error).message, 'error');
            }
          },
        }, t('send')),
      ]),
    ]);
    document.body.append(dialog);
    dialog.addEventListener('close', () => dialog.remove());
    dialog.showModal();
    question.focus();
  }

  const header = signed
    ? h('div.signed-by', [
        `${t('signed')} · ${report.signed_by?.name ?? ''} · ${report.signed_at ? new Date(report.signed_at).toLocaleString(locale()) : ''}`,
        report.verify_code ? h('div', `${t('verifyCode')} ${report.verify_code}`) : null,
      ])
    : !holder
      ? h('div.read-only', t('readOnly'))
      : null;

  const statements = (content.statements ?? []).filter((s) => s.zh || s.en);
  const element = h('aside.report-panel', { dataset: { status: report.status ?? 'new' } }, [
    h('h2', t('report')),
    header,
    h('label', [t('template'), templateSelect]),
    statements.length
      ? h('div.statements', [
          h('h4', t('statements')),
          h('ul', statements.map((s) => h('li', lang() === 'zh' ? s.zh ?? s.en ?? '' : s.en ?? s.zh ?? ''))),
        ])
      : null,
    h('label', [t('findings'), findings]),
    h('label', [t('impression'), impression]),
    h('div.actions', [state, escalateButton, signButton]),
    h('p.hint', t('shortcuts')),
  ]);

  return {
    element,
    sign,
    async dispose() {
      window.clearInterval(renewTimer);
      window.clearTimeout(saveTimer);
      if (finished) return;
      await save();
      // Opened and left untouched: give it back to the pool at once, not when the lease ends.
      if (editable && !savedOnce) await api('POST', `/worklist/${studyUid}/release`).catch(() => undefined);
    },
  };
}
