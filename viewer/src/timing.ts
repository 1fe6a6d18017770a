/**
 * When the reader asked for the page being opened, so the viewer can report the wait from that
 * moment (issue 5: click on a worklist row → first image drawn). A click notes its own event
 * time, which is earlier than the hash change it causes; a typed address or the browser's back
 * button has no input to note and counts from the navigation.
 */

let pending: number | null = null;

/** A study was asked for at ``at`` (an input event's timeStamp, on the performance clock). */
export function noteOpen(at: number): void {
  pending = at;
}

/** The moment the page now opening was asked for; the note is used once. */
export function takeOpenedAt(): number {
  const at = pending !== null && performance.now() - pending < 5000 ? pending : performance.now();
  pending = null;
  return at;
}
