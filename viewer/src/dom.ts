/** A tiny element builder: h('div.cls', {onclick}, [children]). */

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, any>;

export function h<K extends keyof HTMLElementTagNameMap>(
  spec: K | `${K}.${string}` | `${K}#${string}`,
  attrs: Attrs | Child[] | Child = {},
  children: Child[] | Child = [],
): HTMLElementTagNameMap[K] {
  if (Array.isArray(attrs) || attrs instanceof Node || typeof attrs !== 'object' || attrs === null) {
    children = attrs as Child[] | Child;
    attrs = {};
  }
  const [tagAndId, ...classes] = spec.split('.');
  const [tag, id] = tagAndId.split('#');
  const el = document.createElement(tag as K);
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(' ');
  for (const [key, value] of Object.entries(attrs as Attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'style' && typeof value === 'object') {
      Object.assign(el.style, value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key in el && key !== 'list' && key !== 'form') {
      (el as any)[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[] | Child): void {
  for (const child of Array.isArray(children) ? children : [children]) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** Show a short message at the bottom of the screen (errors stay longer). */
export function toast(message: string, kind: 'info' | 'error' = 'info'): void {
  const box = h('div.toast', { role: kind === 'error' ? 'alert' : 'status' }, message);
  box.classList.add(kind);
  document.body.appendChild(box);
  setTimeout(() => box.remove(), kind === 'error' ? 8000 : 3000);
}
