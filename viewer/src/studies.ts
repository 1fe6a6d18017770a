/**
 * Study details the worklist has already asked for (to prefetch a row's first image), kept for
 * the reading page that opens next so the click does not wait for the same request twice. An
 * entry is taken once and dropped: the reading page never works from a copy older than the
 * worklist view that fetched it.
 */

import { api, authHeaders, token, type StudyDetail } from './api';

const KEEP_MS = 120_000;
const fetched = new Map<string, { at: number; detail: Promise<StudyDetail> }>();

/** The study's detail, fetched once while it waits to be opened. */
export function prefetchStudy(uid: string): Promise<StudyDetail> {
  const known = fetched.get(uid);
  if (known && performance.now() - known.at < KEEP_MS) return known.detail;
  // Not through api(): a prefetch refused (the reader just logged out, a token expired) must
  // fail quietly, not send the reader to the login page as a refused action of theirs would.
  const detail = token()
    ? fetch(`/api/v1/studies/${uid}`, { headers: { ...authHeaders(), Accept: 'application/json' } }).then(
        (answer) => (answer.ok ? (answer.json() as Promise<StudyDetail>) : Promise.reject(new Error(`HTTP ${answer.status}`))),
      )
    : Promise.reject(new Error('not logged in'));
  fetched.set(uid, { at: performance.now(), detail });
  detail.catch(() => fetched.delete(uid));
  return detail;
}

/** The detail for the page that opens the study: the prefetched one if fresh, else a new one. */
export function takeStudy(uid: string): Promise<StudyDetail> {
  const known = fetched.get(uid);
  fetched.delete(uid);
  const fresh = () => api<StudyDetail>('GET', `/studies/${uid}`);
  if (known && performance.now() - known.at < KEEP_MS) return known.detail.catch(fresh);
  return fresh();
}
