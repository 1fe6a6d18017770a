/**
 * The report beside the images: template, autosaved draft, sign, escalation (会诊), and what
 * follows a signature — the senior's second signature of a preliminary report, an amendment with
 * its reason, the version history, and the consultation a higher-level reader answers.
 */

import {
  ApiError,
  api,
  type ConsultationView,
  type Me,
  type ReportContent,
  type ReportView,
  type TemplateView,
  username,
} from '../api';
import { clear, h, toast } from '../dom';
import { lang, locale, t } from '../i18n';

const AUTOSAVE_MS = 1200;
/** The ECG page dispatches this on document, with the study UID, once the reader's
 * confirmed measurements are stored; the panel then takes them into its draft. */
export const ECG_CONFIRMED_EVENT = 'rdx:ecg-confirmed';
const RENEW_MS = 120_000;

export interface ReportPanel {
  element: HTMLElement;
  sign(): Promise<void>;
  dispose(): Promise<void>;
}

interface MeCache {
  user: string | null;
  answer: Promise<Me | null>;
}

let me: MeCache | null = null;

/**
 * Who is logged in (the consulted pool's answer form, the second signature); asked once per
 * login: logging out and in as someone else does not reload the page, so the cache is keyed by
 * the username the login stored.
 */
function whoAmI(): Promise<Me | null> {
  const user = username();
  if (me === null || me.user !== user) {
    const asked: MeCache = { user, answer: api<Me>('GET', '/auth/me') };
    asked.answer = asked.answer.catch(() => {
      if (me === asked) me = null;
      return null;
    });
    me = asked;
  }
  return me.answer;
}

function when(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleString(locale()) : '';
}

export async function reportPanel(
  studyUid: string,
  modality: string,
  onDone: (what: 'signed' | 'escalated' | 'confirmed' | 'amended') => void,
): Promise<ReportPanel> {
  // Claim, report, templates, consultations and the user at once: none waits for another. A
  // signed study cannot be claimed; that refusal is only news when there is something to write.
  const claim = api('POST', `/worklist/${studyUid}/claim`).then(
    () => null,
    (error: unknown) => {
      if (!(error instanceof ApiError)) throw error;
      return error;
    },
  );
  const [claimError, report, templates, consultations, user] = await Promise.all([
    claim,
    api<ReportView>('GET', `/studies/${studyUid}/report`),
    api<TemplateView[]>('GET', '/report-templates'),
    api<ConsultationView[]>('GET', `/studies/${studyUid}/consultations`).catch(() => [] as ConsultationView[]),
    whoAmI(),
  ]);
  const status = report.status;
  // Only a senior may give the second signature (the server answers 403 to anyone else): a
  // junior sees the preliminary report read-only, with a note saying whose step it is. The
  // server refuses a junior's claim of such a study too, so no lease holds the senior off.
  const mayConfirm = status === 'preliminary' && user?.senior === true;
  const onlyReads = status === 'preliminary' && !mayConfirm;
  const holder = claimError === null && !onlyReads;
  const signed = status !== null && status !== 'draft';
  if (!holder && !signed) toast(`${t('claimFailed')}: ${claimError!.detail}`, 'error');
  const editable = holder && !signed;
  const latest = report.versions.at(-1);
  const content: ReportContent = {
    findings: '',
    impression: '',
    ...(signed ? latest?.content : report.draft?.content),
  };
  let template = report.draft?.template ?? report.template;
  let saveTimer: number | undefined;
  let saving: Promise<unknown> = Promise.resolve();
  let dirty = false;
  let savedOnce = Boolean(report.draft?.saved);
  let finished = false;
  // The draft's revision this page last saved or loaded, and the text the server then had: a
  // save names the revision (the server refuses one made from an older draft), and text that
  // differs from `synced` is the reader's own typing, which a newer server draft never replaces.
  let revision = report.draft?.revision ?? 0;
  let synced = { findings: content.findings ?? '', impression: content.impression ?? '' };
  let conflicts = 0;

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
    await saving; // one save at a time: each names the revision the one before it made
    if (!dirty || finished) return;
    dirty = false;
    content.findings = findings.value;
    content.impression = impression.value;
    const sent = { findings: content.findings, impression: content.impression };
    state.textContent = t('saving');
    saving = api<ReportView>('PUT', `/studies/${studyUid}/report/draft`, {
      json: { template, content, base_revision: revision },
    })
      .then((view) => {
        revision = view.draft?.revision ?? revision + 1;
        synced = sent;
        conflicts = 0;
        savedOnce = true;
        state.textContent = `${t('saved')} ${new Date().toLocaleTimeString(locale())}`;
      })
      .catch(async (error: Error) => {
        dirty = true;
        state.textContent = t('unsaved');
        const newer = error instanceof ApiError && error.status === 409
          && typeof (error.body as { revision?: unknown } | null)?.revision === 'number';
        if (newer && conflicts++ < 3 && (await takeServerDraft())) {
          // The draft moved on meanwhile (confirmed ECG values carried into it, another tab):
          // what the reader typed is kept over it and saved again, at once.
          window.clearTimeout(saveTimer);
          saveTimer = window.setTimeout(save, 0);
          return;
        }
        toast(error.message, 'error');
      });
    await saving;
  }

  /**
   * Take the server's draft: its structured ECG values (measurements, rhythm, statements, the
   * critical call) always, its text wherever the reader has not typed since the last save.
   */
  async function takeServerDraft(): Promise<boolean> {
    let next: ReportView['draft'] | undefined;
    try {
      next = (await api<ReportView>('GET', `/studies/${studyUid}/report`)).draft;
    } catch {
      return false;
    }
    if (!next || finished) return false;
    revision = next.revision;
    const server = next.content;
    content.measurements = server.measurements;
    content.rhythm = server.rhythm;
    content.statements = server.statements;
    content.critical = server.critical;
    const serverText = { findings: server.findings ?? '', impression: server.impression ?? '' };
    if (findings.value === synced.findings) findings.value = content.findings = serverText.findings;
    if (impression.value === synced.impression) impression.value = content.impression = serverText.impression;
    synced = serverText;
    if (findings.value !== synced.findings || impression.value !== synced.impression) dirty = true;
    return true;
  }

  findings.addEventListener('input', changed);
  impression.addEventListener('input', changed);
  templateSelect.addEventListener('change', () => {
    template = templateSelect.value;
    changed();
  });

  /**
   * The ECG page beside stored the reader's confirmed measurements: the server has carried them
   * into the draft (or into the pre-filling of an unsaved one); show them here too, without
   * overwriting what the reader has typed since the last save, and without letting a pending
   * autosave put the machine's values back.
   */
  async function followEcgConfirmation(event: Event): Promise<void> {
    if (!editable || finished || (event as CustomEvent<string>).detail !== studyUid) return;
    window.clearTimeout(saveTimer);
    await saving;
    await takeServerDraft();
    if (dirty) await save();
  }
  if (modality === 'ECG') document.addEventListener(ECG_CONFIRMED_EVENT, followEcgConfirmation);

  // Autosave renews nothing: keep the lease while the reader has the study open.
  const renewTimer = holder
    ? window.setInterval(() => api('POST', `/worklist/${studyUid}/renew`).catch(() => undefined), RENEW_MS)
    : undefined;

  /** The text as now on screen, over the rest of the content (measurements, statements …). */
  function edited(): ReportContent {
    return { ...content, findings: findings.value, impression: impression.value };
  }

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

  /** Second signature (PS: 二级审核): a senior makes the preliminary report final, as edited. */
  async function confirm(): Promise<void> {
    confirmButton.disabled = true;
    try {
      const answer = await api<ReportView>('POST', `/studies/${studyUid}/report/confirm`, { json: { content: edited() } });
      toast(`${t('confirmed')} ${answer.verify_code ? `· ${t('verifyCode')} ${answer.verify_code}` : ''}`);
      finished = true;
      onDone('confirmed');
    } catch (error) {
      confirmButton.disabled = false;
      toast((error as Error).message, 'error');
    }
  }

  const signButton = h('button.primary', { name: 'sign', disabled: !editable, onclick: sign, title: 'Ctrl+Enter' }, t('sign'));
  const escalateButton = h('button', { name: 'escalate', disabled: !editable, onclick: () => escalate() }, t('escalate'));
  const confirmButton = h('button.primary', { name: 'confirm', onclick: confirm }, t('confirm'));
  const amendButton = h('button', { name: 'amend', onclick: () => startAmending() }, t('amend'));

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
          name: 'send',
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

  // Amending: the signed text becomes editable with a reason beside it; the old versions stay.
  const amendReason = h('textarea', { name: 'amend-reason', rows: 2, placeholder: t('amendReasonHint') });
  const amendSubmit = h('button.primary', { name: 'amend-submit', onclick: () => amend() }, t('amendSubmit'));
  const amendCancel = h('button', {
    name: 'amend-cancel',
    onclick: () => {
      findings.value = content.findings;
      impression.value = content.impression;
      findings.disabled = impression.disabled = true;
      amendBox.hidden = true;
      amendButton.hidden = false;
    },
  }, t('cancel'));
  const amendBox = h('div.amend', { hidden: true }, [h('label', [t('amendReason'), amendReason]), h('div.actions', [amendCancel, amendSubmit])]);

  function startAmending(): void {
    findings.disabled = impression.disabled = false;
    amendButton.hidden = true;
    amendBox.hidden = false;
    amendReason.focus();
  }

  async function amend(): Promise<void> {
    const reason = amendReason.value.trim();
    if (!reason) {
      toast(t('amendReasonNeeded'), 'error');
      amendReason.focus();
      return;
    }
    amendSubmit.disabled = true;
    try {
      await api<ReportView>('POST', `/studies/${studyUid}/report/amend`, { json: { content: edited(), reason } });
      toast(t('amended'));
      finished = true;
      onDone('amended');
    } catch (error) {
      amendSubmit.disabled = false;
      toast((error as Error).message, 'error');
    }
  }

  const header = signed
    ? h('div.signed-by', [
        `${t(`r_${status}`)} · ${report.signed_by?.name ?? ''} · ${when(report.signed_at)}`,
        report.confirmed_by ? h('div', `${t('confirmedBy')} ${report.confirmed_by.name} · ${when(report.confirmed_at)}`) : null,
        report.verify_code ? h('div', `${t('verifyCode')} ${report.verify_code}`) : null,
      ])
    : !holder
      ? h('div.read-only', t('readOnly'))
      : null;

  // Every signed version, newest first, with who signed it, when, and an amendment's reason.
  const versions = report.versions.length > 1 || status === 'amended'
    ? h('details.versions', { open: status === 'amended' }, [
        h('summary', `${t('versions')} (${report.versions.length})`),
        h('ol', { reversed: true }, [...report.versions].reverse().map((v) =>
          h('li', { dataset: { version: String(v.version), kind: v.kind } }, [
            h('strong', `v${v.version} ${t(`k_${v.kind}`)}`),
            ` · ${v.author?.name ?? ''} · ${when(v.created_at)}`,
            v.reason ? h('div.reason', `${t('amendReason')}: ${v.reason}`) : null,
            v.signature_valid === false ? h('div.error', t('badSignature')) : null,
            h('div.text', `${v.content.impression ?? ''}`),
          ]),
        )),
      ])
    : null;

  const consultationBox = h('section.consultations');
  function drawConsultations(list: ConsultationView[]): void {
    clear(consultationBox);
    if (!list.length) return;
    consultationBox.append(h('h4', t('consultations')));
    for (const c of list) {
      const mine = c.status === 'open' && user !== null && c.to_pool.code === user.institution;
      const answer = h('textarea', { name: 'consultation-answer', rows: 3 });
      const send = h('button.primary', {
        name: 'answer-consultation',
        onclick: async () => {
          if (!answer.value.trim()) return answer.focus();
          send.disabled = true;
          try {
            const done = await api<ConsultationView>(
              'POST',
              `/studies/${studyUid}/consultations/${c.id}/answer`,
              { json: { answer: answer.value.trim() } },
            );
            toast(t('answered'));
            drawConsultations(list.map((x) => (x.id === done.id ? done : x)));
          } catch (error) {
            send.disabled = false;
            toast((error as Error).message, 'error');
          }
        },
      }, t('answerConsultation'));
      consultationBox.append(
        h('article.consultation', { dataset: { id: String(c.id), status: c.status } }, [
          h('div.meta', `${c.from_pool.name} → ${c.to_pool.name} · ${c.requested_by ?? t('automatic')} · ${when(c.requested_at)} · ${t(`c_${c.status}`)}`),
          c.question ? h('p', [h('strong', `${t('question')}: `), c.question]) : null,
          c.requester_opinion ? h('p', [h('strong', `${t('opinion')}: `), c.requester_opinion]) : null,
          c.answer
            ? h('p.answer', [h('strong', `${t('answer')} (${c.answered_by ?? ''} ${when(c.answered_at)}): `), c.answer])
            : null,
          mine ? h('div.answer-form', [h('label', [t('answer'), answer]), h('div.actions', [send])]) : null,
        ]),
      );
    }
  }
  drawConsultations(consultations);

  const statements = (content.statements ?? []).filter((s) => s.zh || s.en);
  const actions = status === 'preliminary'
    ? mayConfirm
      ? h('div.actions', [confirmButton])
      : h('p.read-only.awaiting-senior', t('awaitingSenior'))
    : status === 'final' || status === 'amended'
      ? h('div.actions', [amendButton])
      : h('div.actions', [state, escalateButton, signButton]);
  if (mayConfirm) findings.disabled = impression.disabled = false; // the senior may edit
  const element = h('aside.report-panel', { dataset: { status: status ?? 'new' } }, [
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
    amendBox,
    actions,
    consultationBox,
    versions,
    h('p.hint', t('shortcuts')),
  ]);

  return {
    element,
    sign,
    async dispose() {
      document.removeEventListener(ECG_CONFIRMED_EVENT, followEcgConfirmation);
      window.clearInterval(renewTimer);
      window.clearTimeout(saveTimer);
      if (finished) return;
      await save();
      // Opened and left untouched: give it back to the pool at once, not when the lease ends.
      if (holder && !savedOnce) await api('POST', `/worklist/${studyUid}/release`).catch(() => undefined);
    },
  };
}
