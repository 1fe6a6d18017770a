/** The hub's REST API (/api/v1) with the bearer token of the logged-in reader. */

const TOKEN_KEY = 'rdx.token';
const USER_KEY = 'rdx.user';
const REFRESH_KEY = 'rdx.refresh';
const EXPIRES_KEY = 'rdx.expires';

export class ApiError extends Error {
  constructor(
    public status: number,
    public detail: string,
    public body: unknown = null,
  ) {
    super(detail);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function username(): string | null {
  return sessionStorage.getItem(USER_KEY);
}

export function logout(): void {
  if (refreshTimer !== undefined) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  for (const key of [TOKEN_KEY, USER_KEY, REFRESH_KEY, EXPIRES_KEY]) sessionStorage.removeItem(key);
}

interface TokenAnswer {
  access_token: string;
  expires_in: number;
  refresh_token?: string;
}

let refreshTimer: ReturnType<typeof setTimeout> | undefined;
let refreshing: Promise<boolean> | null = null;

/** Keep the short-lived access token and schedule its renewal before it runs out. */
function keepTokens(body: TokenAnswer): void {
  sessionStorage.setItem(TOKEN_KEY, body.access_token);
  if (body.refresh_token) sessionStorage.setItem(REFRESH_KEY, body.refresh_token);
  const expiresAt = Date.now() + body.expires_in * 1000;
  sessionStorage.setItem(EXPIRES_KEY, String(expiresAt));
  scheduleRefresh();
}

/**
 * Renew at four fifths of the token's life: the image loader and the live worklist read the
 * token from here without going through api(), so waiting for a 401 would cut a reading short.
 */
export function scheduleRefresh(): void {
  if (refreshTimer !== undefined) clearTimeout(refreshTimer);
  const expiresAt = Number(sessionStorage.getItem(EXPIRES_KEY) ?? 0);
  if (!expiresAt || !sessionStorage.getItem(REFRESH_KEY)) return;
  const lifeLeft = expiresAt - Date.now();
  refreshTimer = setTimeout(() => void refreshTokens(), Math.max(0, lifeLeft * 0.8));
}

/** Trade the refresh token for new ones (RFC 6749 §6, rotated by the hub); false if refused. */
export function refreshTokens(): Promise<boolean> {
  const current = sessionStorage.getItem(REFRESH_KEY);
  if (!current) return Promise.resolve(false);
  refreshing ??= (async () => {
    try {
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: current });
      const answer = await fetch('/api/v1/auth/refresh', { method: 'POST', body: form });
      if (!answer.ok) return false;
      keepTokens((await answer.json()) as TokenAnswer);
      return true;
    } catch {
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** OAuth2 password grant (RFC 6749 §4.3): form fields, answers a bearer JWT. */
export async function login(user: string, password: string): Promise<void> {
  const form = new URLSearchParams({ username: user, password });
  const answer = await fetch('/api/v1/auth/token', { method: 'POST', body: form });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new ApiError(answer.status, String(body.detail ?? answer.statusText), body);
  keepTokens(body as TokenAnswer);
  sessionStorage.setItem(USER_KEY, user);
}

export type Query = Record<string, string | number | boolean | (string | number)[] | null | undefined>;

export function queryString(query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === null || value === undefined || value === '') continue;
    for (const one of Array.isArray(value) ? value : [value]) params.append(key, String(one));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

export function authHeaders(): Record<string, string> {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

/** One API call; a 401 renews the token once, then sends the reader back to the login page. */
export async function api<T = any>(
  method: string,
  path: string,
  options: { query?: Query; json?: unknown; accept?: string } = {},
): Promise<T> {
  const send = (): Promise<Response> => {
    const headers: Record<string, string> = { ...authHeaders(), Accept: options.accept ?? 'application/json' };
    let body: BodyInit | undefined;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    }
    return fetch(`/api/v1${path}${queryString(options.query)}`, { method, headers, body });
  };
  let answer = await send();
  if (answer.status === 401 && (await refreshTokens())) answer = await send();
  if (answer.status === 401) {
    logout();
    location.hash = '#/login';
    throw new ApiError(401, 'not logged in');
  }
  const text = await answer.text();
  let parsed: any = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  if (!answer.ok) {
    const detail = parsed && typeof parsed === 'object' && 'detail' in parsed ? parsed.detail : text;
    throw new ApiError(answer.status, typeof detail === 'string' ? detail : JSON.stringify(detail), parsed);
  }
  return parsed as T;
}

// --- shapes the pages use (see src/remote_dx/worklist/schemas.py, reporting/schemas.py) ---

export interface ECGSummary {
  status: string;
  heart_rate: number | null;
  rhythm: string | null;
  critical: boolean;
  technically_unsatisfactory: boolean;
}

export interface WorklistEntry {
  study_uid: string;
  patient_id: string;
  patient_name: string | null;
  patient_sex: string | null;
  patient_birth_date: string | null;
  modality: string | null;
  study_description: string | null;
  origin: string;
  pool: string;
  priority: string;
  status: string;
  received_at: string;
  due_at: string;
  num_instances: number;
  section: string | null;
  claimed_by: string | null;
  lease_expires_at: string | null;
  escalation_level: number;
  overdue: boolean;
  version: number;
  ecg: ECGSummary | null;
}

export interface WorklistPage {
  items: WorklistEntry[];
  total: number;
}

export interface InstanceView {
  sop_instance_uid: string;
  sop_class_uid: string;
  transfer_syntax_uid: string;
  instance_number: number | null;
}

export interface SeriesView {
  series_uid: string;
  modality: string | null;
  series_number: number | null;
  description: string | null;
  body_part: string | null;
  instances: InstanceView[];
}

export interface StudyDetail {
  study_uid: string;
  accession_number: string | null;
  study_date: string | null;
  description: string | null;
  modalities: string | null;
  body_part: string | null;
  origin: string;
  status: string;
  received_at: string;
  patient: { patient_id: string; name: string | null; sex: string | null; birth_date: string | null };
  series: SeriesView[];
  worklist_item: { pool: string; priority: string; status: string; due_at: string } | null;
  ecg: ECGSummary | null;
}

export interface ReportContent {
  findings: string;
  impression: string;
  measurements?: Record<string, number | null> | null;
  rhythm?: string | null;
  statements?: { code?: string | null; zh?: string | null; en?: string | null }[];
  critical?: boolean | null;
  positive?: boolean | null;
}

export interface ReportVersion {
  version: number;
  kind: string; // preliminary | final | confirm | amend
  content: ReportContent;
  reason: string | null;
  created_at: string;
  author: { name: string } | null;
  signature_valid: boolean;
}

export interface ReportView {
  study_uid: string;
  status: string | null; // null, draft, preliminary, final, amended
  template: string;
  current_version: number;
  second_signature_required: boolean;
  verify_code: string | null;
  critical: boolean;
  signed_by: { name: string } | null;
  signed_at: string | null;
  confirmed_by: { name: string } | null;
  confirmed_at: string | null;
  // revision: counts every change of the draft; a save names the one it was made from.
  draft: { template: string; content: ReportContent; saved_at: string | null; saved: boolean; revision: number } | null;
  versions: ReportVersion[];
}

/** A consultation (会诊): see src/remote_dx/routing/schemas.py. */
export interface ConsultationView {
  id: number;
  study_uid: string;
  status: string; // open | answered | …
  automatic: boolean;
  from_pool: { code: string; name: string; level: string };
  to_pool: { code: string; name: string; level: string };
  question: string | null;
  requester_opinion: string | null;
  requested_by: string | null;
  requested_at: string;
  answer: string | null;
  answered_by: string | null;
  answered_at: string | null;
}

/** GET /auth/me. */
export interface Me {
  username: string;
  full_name: string;
  role: string;
  institution: string;
  /** May give a preliminary report its second signature (senior reader, 副主任医师/主任医师). */
  senior: boolean;
}

export interface TemplateView {
  code: string;
  name: string;
  name_en: string;
  kind: string;
  modalities: string[];
}

/** The PN value as people read it: the ideographic group when there is one (PS3.5 §6.2.1). */
export function personName(value: string | null | undefined): string {
  if (!value) return '';
  const groups = value.split('=');
  const shown = groups.find((g, i) => i > 0 && g.trim()) ?? groups[0];
  return shown.split('^').filter(Boolean).join(shown === groups[0] ? ' ' : '');
}
