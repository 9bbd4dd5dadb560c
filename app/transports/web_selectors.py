"""Everything the ``web`` transport knows about WhatsApp Web's page, in one versioned module.

When WhatsApp Web changes its markup, this file is the fix: the CSS selectors, the JavaScript the
driver evaluates, and the page hook (a MutationObserver installed in every page of an account's
browser context) that turns what the page shows into events for the driver. ``app/transports/web.py``
holds no selector and no page script of its own; ``tests/fixtures/wa_web/`` reproduces exactly the
parts of the page named here, so a change here and there is the whole update (docs/web-transport.md).

What the driver relies on:

* the login (landing) screen: the QR container keeps the QR payload in its ``data-ref`` attribute
  around the ``<canvas>``, and swaps it as the code rotates; after a few rotations it shows a
  "reload QR" button instead;
* the chat list (``#pane-side``): visible means logged in; a row with an unread badge is a chat
  with new messages;
* ``localStorage['last-wid-md']`` (``"<digits>:<device>@c.us"``): the logged-in phone number;
* the "click to chat" URL ``/send?phone=<digits>`` opens a chat; an invalid number shows a popup;
* the open chat (``#main``): message rows carry ``data-id="<fromMe>_<chat jid>_<message id>"``,
  outgoing rows have a tick icon (``data-icon`` msg-time / msg-check / msg-dblcheck, read when its
  label says so), incoming text is in ``.copyable-text[data-pre-plain-text]``; incoming media is
  an element whose ``blob:`` URL holds its bytes: an image or a sticker (``img``, a sticker marked
  ``data-sticker``), a video, an audio (a voice note has the ``ptt-status`` icon), a document (a
  download link whose ``download`` attribute is its file name);
* the compose box (contenteditable, Enter sends), the attach button and its file inputs (photos &
  videos, document, sticker, audio), the media preview's caption box (none for a sticker or an
  audio), its "voice message" switch (audio) and its send button;
* the menu's "Log out" entry and its confirmation;
* a ban is a full-page screen without QR or chat list whose text says so.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

#: bump when anything below changes (it is logged at start and shown by docs/web-transport.md)
WA_WEB_SELECTORS_VERSION = "2026.12"


@dataclass(frozen=True)
class WebSelectors:
    version: str = WA_WEB_SELECTORS_VERSION

    # -- login screen
    qr_container: str = "div[data-ref]"
    qr_canvas: str = "div[data-ref] canvas"
    qr_reload_button: str = "div[data-qr-expired] button, button[aria-label='Click to reload QR code']"
    #: seconds a QR code lives before the page rotates it (reported as ``expires_at``)
    qr_lifetime_s: int = 20

    # -- logged in
    chat_list: str = "#pane-side"
    chat_row: str = "#pane-side [role='listitem']"
    unread_badge: str = "span[aria-label*='unread message']"
    phone_storage_key: str = "last-wid-md"

    # -- a chat
    open_chat_path: str = "/send?phone={digits}"
    chat_panel: str = "#main"
    message_row: str = "#main div[data-id]"
    compose_box: str = "#main footer div[contenteditable='true'][role='textbox']"
    invalid_number_popup: str = "div[data-animate-modal-popup]"
    invalid_number_text: str = "invalid"
    popup_ok_button: str = "div[data-animate-modal-popup] button"
    message_text: str = ".copyable-text[data-pre-plain-text] span.selectable-text"
    message_meta: str = ".copyable-text[data-pre-plain-text]"
    message_image: str = "img[src^='blob:'], img[src^='data:']"
    message_sticker: str = "img[data-sticker][src^='blob:']"
    message_video: str = "video[src^='blob:']"
    message_audio: str = "audio[src^='blob:']"
    message_voice_icon: str = "span[data-icon='ptt-status']"
    message_document: str = "a[download][href^='blob:']"
    tick_icon: str = "span[data-icon^='msg-']"
    #: what a chat shows within this many ms of opening is its history, not news (see the hook)
    history_window_ms: int = 1500

    # -- media
    attach_button: str = "#main footer button[title='Attach']"
    attach_media_input: str = "input[type='file'][accept^='image/*']"
    attach_document_input: str = "input[type='file'][accept='*']"
    attach_sticker_input: str = "input[type='file'][accept='image/webp']"
    attach_audio_input: str = "input[type='file'][accept^='audio']"
    caption_box: str = "div[contenteditable='true'][aria-label='Add a caption']"
    #: on an audio's preview: aria-checked "true" sends it as a voice note (ptt)
    voice_note_switch: str = "[role='switch'][aria-label='Send as voice message']"
    media_send_button: str = "div[role='button'][aria-label='Send']"

    # -- menu
    menu_button: str = "#side header span[data-icon='menu']"
    logout_menu_item: str = "div[role='button'][aria-label='Log out']"
    logout_confirm_button: str = "div[data-animate-modal-popup] button.confirm"

    # -- ban screen: a page with neither QR nor chat list whose text matches this (case-insensitive)
    ban_text_pattern: str = r"not allowed to use WhatsApp|account (?:has been|is) banned"

    # -- the attributes whose changes the page hook watches
    watched_attributes: tuple = ("data-ref", "data-icon", "aria-label", "data-qr-expired", "data-id")


SELECTORS = WebSelectors()

#: mime types the media input accepts; anything else goes through the document input
MEDIA_INPUT_TYPES = ("image/", "video/")
#: what the sticker input takes
STICKER_MIME = "image/webp"
#: mime types the audio input accepts (an audio or a voice note)
AUDIO_INPUT_TYPES = ("audio/",)

#: WhatsApp Web's tick icons -> our ack statuses (read is the double tick labelled "Read")
ACK_ICONS = {"msg-check": "sent", "msg-dblcheck": "delivered", "msg-error": "failed"}


def open_chat_url(base_url: str, digits: str, selectors: WebSelectors = SELECTORS) -> str:
    return base_url.rstrip("/") + selectors.open_chat_path.format(digits=digits)


def hooks_script(selectors: WebSelectors = SELECTORS, binding: str = "__waEvent") -> str:
    """The init script of every page: watches the DOM and calls ``window[binding](kind, data)``.

    Events: ``screen`` {screen: qr|chats|banned|qr_expired|loading, phone}, ``qr`` {ref},
    ``ack`` {id, status}, ``inbound`` {id, chat, text, name, media}, ``unread`` {count}; ``media``
    is null or {kind: image|sticker|video|audio|voice|document, url (blob:), filename}.
    The page keeps what it reported per load; the driver de-duplicates across reloads.
    """
    return _HOOKS_JS.replace("__SELECTORS__", json.dumps(asdict(selectors))).replace("__BINDING__", binding) \
        .replace("__ACK_ICONS__", json.dumps(ACK_ICONS))


def profile_script(platform: str) -> str:
    """Make ``navigator.platform`` agree with the profile's user agent."""
    return ("Object.defineProperty(Navigator.prototype, 'platform', "
            f"{{get: () => {json.dumps(platform)}, configurable: true}});")


#: () -> "+<digits>" | null: the logged-in account's number
READ_PHONE_JS = """(key) => {
  const raw = localStorage.getItem(key) || localStorage.getItem('last-wid') || '';
  const m = String(raw).replace(/"/g, '').match(/^(\\d{6,15})[:@]/);
  return m ? '+' + m[1] : null;
}"""

#: () -> jid of the chat open in #main (from its message rows), or null
CURRENT_CHAT_JS = """([rowSel]) => {
  for (const row of document.querySelectorAll(rowSel)) {
    const m = (row.getAttribute('data-id') || '').match(/^(true|false)_([^_]+)_/);
    if (m) return m[2];
  }
  return null;
}"""

#: () -> [message id, ...] of outgoing rows in the open chat
OUTGOING_IDS_JS = """([rowSel]) => Array.from(document.querySelectorAll(rowSel))
  .map(r => (r.getAttribute('data-id') || '').match(/^true_[^_]+_([^_]+)/)).filter(Boolean).map(m => m[1])"""

#: ([rowSel, before]) -> the newest outgoing message id not in ``before``, or null (a wait predicate)
NEW_OUTGOING_ID_JS = """([rowSel, before]) => {
  const ids = Array.from(document.querySelectorAll(rowSel))
    .map(r => (r.getAttribute('data-id') || '').match(/^true_[^_]+_([^_]+)/)).filter(Boolean).map(m => m[1])
    .filter(i => !before.includes(i));
  return ids.length ? ids[ids.length - 1] : null;
}"""

#: ([rowSel, before]) -> true once the open chat (by its rows' data-id) is another than ``before``
CHAT_CHANGED_JS = """([rowSel, before]) => {
  for (const row of document.querySelectorAll(rowSel)) {
    const m = (row.getAttribute('data-id') || '').match(/^(true|false)_([^_]+)_/);
    if (m) return m[2] !== before;
  }
  return false;
}"""

#: ([blob url, max bytes]) -> {mime, size, data_b64}: the bytes of a media the page shows (data_b64
#: null when it is larger than the max: not carried over to the driver)
FETCH_BLOB_JS = """async ([url, max]) => {
  const blob = await (await fetch(url)).blob();
  if (blob.size > max) return {mime: blob.type || 'application/octet-stream', size: blob.size, data_b64: null};
  const buf = new Uint8Array(await blob.arrayBuffer());
  let bin = '';
  for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
  return {mime: blob.type || 'application/octet-stream', size: blob.size, data_b64: btoa(bin)};
}"""

#: () -> the unread count of the first chat-list row with an unread badge, marked (data-wa-open)
#: for a click; 0 when there is none
MARK_UNREAD_ROW_JS = """([rowSel, badgeSel]) => {
  document.querySelectorAll('[data-wa-open]').forEach(e => e.removeAttribute('data-wa-open'));
  for (const row of document.querySelectorAll(rowSel)) {
    const badge = row.querySelector(badgeSel);
    if (badge) {
      row.setAttribute('data-wa-open', '1');
      const n = parseInt((badge.getAttribute('aria-label') || badge.textContent || '').replace(/[^0-9]/g, ''), 10);
      return n > 0 ? n : 1;
    }
  }
  return 0;
}"""

#: (n) -> tell the hook that the chat about to open has ``n`` unread messages to report
EXPECT_UNREAD_JS = "(n) => { if (window.__waExpectUnread) window.__waExpectUnread(n); }"
UNREAD_ROW_MARK = "[data-wa-open='1']"

_HOOKS_JS = r"""
(() => {
  if (window.__waHooked) return;
  window.__waHooked = true;
  const S = __SELECTORS__;
  const ICONS = __ACK_ICONS__;
  const banRe = new RegExp(S.ban_text_pattern, 'i');
  const emit = (kind, data) => { try { window['__BINDING__'](kind, data); } catch (e) {} };
  let lastScreen = null, lastRef = null, lastUnread = 0;
  const acks = new Map();
  const seen = new Set();
  // Incoming rows a chat shows when it opens are its history (reported once already, or from before
  // this account was connected): they are not reported, except the last n the driver expects
  // because the chat list showed n unread. Rows that appear later are new messages.
  let panel = null, panelAt = 0, chatKey = null, expectUnread = 0;
  window.__waExpectUnread = n => { expectUnread = n; };

  function readPhone() {
    const raw = (localStorage.getItem(S.phone_storage_key) || localStorage.getItem('last-wid') || '').replace(/"/g, '');
    const m = raw.match(/^(\d{6,15})[:@]/);
    return m ? '+' + m[1] : null;
  }
  function screen() {
    if (document.querySelector(S.chat_list)) return 'chats';
    if (document.querySelector(S.qr_container)) return 'qr';
    if (document.querySelector(S.qr_reload_button)) return 'qr_expired';
    const app = document.getElementById('app') || document.body;
    if (app && banRe.test(app.innerText || '')) return 'banned';
    return 'loading';
  }
  function parseId(dataId) {
    const m = (dataId || '').match(/^(true|false)_([^_]+)_([^_]+)/);
    return m ? {from_me: m[1] === 'true', chat: m[2], id: m[3]} : null;
  }
  function ackOf(row) {
    const icon = row.querySelector(S.tick_icon);
    if (!icon) return null;
    const name = icon.getAttribute('data-icon');
    const label = (icon.getAttribute('aria-label') || '').trim().toLowerCase();
    if (name === 'msg-dblcheck' && label.startsWith('read')) return 'read';
    return ICONS[name] || null;
  }
  function mediaOf(row) {
    let el = row.querySelector(S.message_sticker);
    if (el) return {kind: 'sticker', url: el.getAttribute('src')};
    if ((el = row.querySelector(S.message_image))) return {kind: 'image', url: el.getAttribute('src')};
    if ((el = row.querySelector(S.message_video))) return {kind: 'video', url: el.getAttribute('src')};
    if ((el = row.querySelector(S.message_audio))) {
      return {kind: row.querySelector(S.message_voice_icon) ? 'voice' : 'audio', url: el.getAttribute('src')};
    }
    if ((el = row.querySelector(S.message_document))) {
      return {kind: 'document', url: el.getAttribute('href'), filename: el.getAttribute('download') || null};
    }
    return null;
  }
  function history(parsed) {
    const incoming = parsed.filter(x => !x.key.from_me && !seen.has(x.key.id)).map(x => x.key.id);
    incoming.slice(0, Math.max(0, incoming.length - expectUnread)).forEach(id => seen.add(id));
    expectUnread = 0;
  }
  function messages() {
    const now = Date.now();
    const p = document.querySelector(S.chat_panel);
    if (p !== panel) { panel = p; panelAt = now; chatKey = null; }
    const parsed = [];
    for (const row of document.querySelectorAll(S.message_row)) {
      const key = parseId(row.getAttribute('data-id'));
      if (key) parsed.push({row, key});
    }
    const chat = parsed.length ? parsed[0].key.chat : null;
    if (chat && chat !== chatKey) {
      if (chatKey !== null || now - panelAt <= S.history_window_ms || expectUnread > 0) history(parsed);
      chatKey = chat;
    }
    for (const {row, key} of parsed) {
      if (key.from_me) {
        const status = ackOf(row);
        if (status && acks.get(key.id) !== status) { acks.set(key.id, status); emit('ack', {id: key.id, status}); }
      } else if (!seen.has(key.id)) {
        seen.add(key.id);
        const textEl = row.querySelector(S.message_text);
        const meta = row.querySelector(S.message_meta);
        const pre = meta ? (meta.getAttribute('data-pre-plain-text') || '') : '';
        const name = (pre.match(/\]\s*([^:]+):\s*$/) || [])[1] || null;
        emit('inbound', {id: key.id, chat: key.chat, text: textEl ? textEl.innerText : null, name,
                         media: mediaOf(row)});
      }
    }
  }
  function unread() {
    let count = 0;
    for (const row of document.querySelectorAll(S.chat_row)) if (row.querySelector(S.unread_badge)) count++;
    if (count && count !== lastUnread) emit('unread', {count});
    lastUnread = count;
  }
  function scan() {
    const s = screen();
    if (s !== lastScreen) { lastScreen = s; emit('screen', {screen: s, phone: s === 'chats' ? readPhone() : null}); }
    if (s === 'qr') {
      const ref = document.querySelector(S.qr_container).getAttribute('data-ref');
      if (ref && ref !== lastRef) { lastRef = ref; emit('qr', {ref}); }
    }
    if (s === 'chats') { messages(); unread(); }
  }
  let pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; try { scan(); } catch (e) {} }, 40);
  };
  window.__waRescan = () => { lastUnread = 0; schedule(); };
  const start = () => {
    new MutationObserver(schedule).observe(document.documentElement, {
      subtree: true, childList: true, attributes: true, attributeFilter: S.watched_attributes});
    schedule();
  };
  if (document.documentElement) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""
