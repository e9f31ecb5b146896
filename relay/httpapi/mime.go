package httpapi

import (
	"bytes"
	"encoding/base64"
	"fmt"
	netmail "net/mail"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
)

// The message a request becomes, built with go-message (never by hand: a
// boundary, an encoded word or a folded line written here would be a
// parser bug waiting for a hostile input):
//
//	multipart/mixed                (when there are attachments)
//	  multipart/related            (when there are inline parts)
//	    multipart/alternative      (when there are both text and html)
//	      text/plain, text/html
//	    inline parts (Content-ID)
//	  attachments
//
// Each level is left out when it would hold one part.

// node is one MIME entity: a leaf with a body, or a multipart with parts.
type node struct {
	header message.Header
	body   []byte
	parts  []node
}

// build renders m as an RFC 5322 message with CRLF line ends.
func build(m *checked, hostname string, now time.Time) ([]byte, error) {
	var h mail.Header
	h.SetDate(now)
	if err := h.GenerateMessageIDWithHostname(hostname); err != nil {
		return nil, fmt.Errorf("message id: %w", err)
	}
	h.SetAddressList("From", []*mail.Address{(*mail.Address)(m.from)})
	h.SetAddressList("To", toMailAddresses(m.to))
	h.SetAddressList("Cc", toMailAddresses(m.cc))
	if m.subject != "" {
		h.SetSubject(m.subject)
	}
	for _, kv := range m.headers {
		h.SetText(kv[0], kv[1]) // non-ASCII becomes encoded words
	}
	root := m.tree()
	for f := root.header.Fields(); f.Next(); {
		h.Set(f.Key(), f.Value())
	}
	var buf bytes.Buffer
	buf.Grow(m.builtSize())
	w, err := message.CreateWriter(&buf, h.Header)
	if err != nil {
		return nil, fmt.Errorf("message header: %w", err)
	}
	if err := writeNode(w, root); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func toMailAddresses(in []*netmail.Address) []*mail.Address {
	out := make([]*mail.Address, len(in))
	for i, a := range in {
		out[i] = (*mail.Address)(a)
	}
	return out
}

// writeNode writes n's body or its parts into w, which already holds n's
// header.
func writeNode(w *message.Writer, n node) error {
	if n.parts == nil {
		if _, err := w.Write(n.body); err != nil {
			return fmt.Errorf("write part: %w", err)
		}
		return w.Close()
	}
	for _, p := range n.parts {
		pw, err := w.CreatePart(p.header)
		if err != nil {
			return fmt.Errorf("create part: %w", err)
		}
		if err := writeNode(pw, p); err != nil {
			return err
		}
	}
	return w.Close()
}

// tree is the message's MIME structure.
func (m *checked) tree() node {
	var texts []node
	if m.text != "" {
		texts = append(texts, textNode("text/plain", m.text))
	}
	if m.html != "" {
		texts = append(texts, textNode("text/html", m.html))
	}
	body := wrapParts("multipart/alternative", texts)
	var inline, attached []node
	for _, a := range m.attachments {
		if a.ContentID != "" {
			inline = append(inline, fileNode(a, "inline"))
		} else {
			attached = append(attached, fileNode(a, "attachment"))
		}
	}
	body = wrapParts("multipart/related", append([]node{body}, inline...))
	return wrapParts("multipart/mixed", append([]node{body}, attached...))
}

// wrapParts wraps parts, or is the part itself when there is one.
func wrapParts(mediaType string, parts []node) node {
	if len(parts) == 1 {
		return parts[0]
	}
	var h message.Header
	h.SetContentType(mediaType, nil)
	return node{header: h, parts: parts}
}

func textNode(mediaType, text string) node {
	var h message.Header
	h.SetContentType(mediaType, map[string]string{"charset": "utf-8"})
	h.Set("Content-Transfer-Encoding", "quoted-printable")
	return node{header: h, body: []byte(text)}
}

func fileNode(a Attachment, disposition string) node {
	var h message.Header
	h.SetContentType(a.ContentType, nil)
	h.SetContentDisposition(disposition, map[string]string{"filename": a.Filename})
	h.Set("Content-Transfer-Encoding", "base64")
	if a.ContentID != "" {
		h.Set("Content-Id", "<"+a.ContentID+">")
	}
	return node{header: h, body: a.decoded}
}

// builtSize estimates the built message's size, so that its buffer is
// allocated once: the texts, and each file in base64 lines of 76
// characters; 8 KiB for headers and boundaries.
func (m *checked) builtSize() int {
	n := 8 << 10
	for _, part := range []string{m.text, m.html} {
		n += len(part) + len(part)/10 // quoted-printable's escapes
	}
	for _, a := range m.attachments {
		n += base64.StdEncoding.EncodedLen(len(a.decoded)) * 78 / 76
	}
	return n
}
