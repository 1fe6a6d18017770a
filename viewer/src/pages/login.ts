/** The login page (OAuth2 password grant against /api/v1/auth/token). */

import { ApiError, login } from '../api';
import { clear, h } from '../dom';
import { t } from '../i18n';

export function renderLogin(root: HTMLElement): () => void {
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('p.error', { role: 'alert' });
  const form = h('form.login', {
    onsubmit: async (event: Event) => {
      event.preventDefault();
      error.textContent = '';
      try {
        await login(user.value.trim(), password.value);
        location.hash = '#/worklist';
      } catch (e) {
        error.textContent = `${t('loginFailed')}: ${e instanceof ApiError ? e.detail : String(e)}`;
      }
    },
  }, [
    h('h1', t('app')),
    h('label', [t('username'), user]),
    h('label', [t('password'), password]),
    h('button.primary', { type: 'submit', name: 'login' }, t('login')),
    error,
  ]);
  clear(root);
  root.append(h('div.login-page', form));
  user.focus();
  return () => undefined;
}
