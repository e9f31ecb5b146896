package httpapi

import (
	"encoding/base64"
	"fmt"
	"mime"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/relay/smtpd"
	"github.com/mailfleet/mailfleet/relay/submission"
)

// Limits on what one request may carry, beyond the body's size. Each is
// far above what a real message needs and low enough that a hostile one
// costs little.
const (
	maxAddressLength = 320 // RFC 5321's path limit, with a display name's room
	maxHeaderFields  = 50
	// maxHeaderName leaves room to fold the value: go-message folds a
	// header line at 76 bytes less the name and ": ", and with a name of
	// 74 bytes or more that room is zero or less and it panics.
	maxHeaderName  = 64
	maxLineValue   = 998 // RFC 5322's line limit, for subject and header values
	maxAttachments = 100
	maxFilename    = 255
)

var (
	contentIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,249}$`)
	labelIDPattern   = regexp.MustCompile(wire.IDPattern)
	// headerNamePattern is RFC 5322's field-name: printable ASCII but ':'.
	headerNamePattern = regexp.MustCompile(`^[!-9;-~]+$`)
)

// Headers a caller may not set: the ones the API writes itself from the
// request's fields (so From cannot differ from the checked sender, nor Bcc
// show), the MIME structure, and trace and authentication headers that
// only a relay or a signer may add.
var (
	reservedHeaders = []string{
		"from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
		"received", "return-path", "dkim-signature", "domainkey-signature", "authentication-results",
		"x-smtpapi",
	}
	reservedHeaderPrefixes = []string{"content-", "arc-", "resent-", "x-mailfleet-"}
)

// checked is a request that passed validation.
type checked struct {
	from        *mail.Address
	to, cc, bcc []*mail.Address
	subject     string
	text, html  string
	headers     [][2]string // in name order, so the output is stable
	attachments []Attachment
	labelID     string
	customArgs  map[string]string
}

// recipients is every envelope recipient, Bcc included.
func (m *checked) recipients() []string {
	var out []string
	for _, list := range [][]*mail.Address{m.to, m.cc, m.bcc} {
		for _, a := range list {
			out = append(out, a.Address)
		}
	}
	return out
}

func invalid(format string, a ...any) *apiError {
	return newError(codeInvalidField, fmt.Sprintf(format, a...))
}

// validate checks every field and says which one to fix.
func validate(req *SendRequest, maxRecipients int) (*checked, *apiError) {
	if n := len(req.To) + len(req.Cc) + len(req.Bcc); n > maxRecipients {
		return nil, newError(codeTooManyRecipients, fmt.Sprintf("%d recipients in to, cc and bcc; this account may send to at most %d per message", n, maxRecipients))
	}
	m := &checked{subject: req.Subject, text: req.Text, html: req.HTML, labelID: req.LabelID}
	var e *apiError
	if m.from, e = parseAddress("from", req.From); e != nil {
		return nil, e
	}
	if len(req.To) == 0 {
		return nil, invalid("to: at least one recipient is required")
	}
	for _, f := range []struct {
		name string
		in   []string
		out  *[]*mail.Address
	}{{"to", req.To, &m.to}, {"cc", req.Cc, &m.cc}, {"bcc", req.Bcc, &m.bcc}} {
		if *f.out, e = parseAddresses(f.name, f.in); e != nil {
			return nil, e
		}
	}
	if e := m.checkText(); e != nil {
		return nil, e
	}
	if m.headers, e = checkHeaders(req.Headers); e != nil {
		return nil, e
	}
	if m.attachments, e = checkAttachments(req.Attachments); e != nil {
		return nil, e
	}
	if m.customArgs, e = checkCustomArgs(req.CustomArgs); e != nil {
		return nil, e
	}
	if m.labelID != "" && !labelIDPattern.MatchString(m.labelID) {
		return nil, invalid("labelId: want a label id such as 1001 (%s)", wire.IDPattern)
	}
	return m, nil
}

func (m *checked) checkText() *apiError {
	if e := oneLine("subject", m.subject, maxLineValue); e != nil {
		return e
	}
	if m.text == "" && m.html == "" {
		return invalid("text or html: at least one is required")
	}
	if strings.ContainsRune(m.text, 0) || strings.ContainsRune(m.html, 0) {
		return invalid("text and html: must not contain NUL characters")
	}
	return nil
}

// oneLine refuses control characters (CR and LF above all: header
// injection) and values over max bytes.
func oneLine(field, v string, max int) *apiError {
	if len(v) > max {
		return invalid("%s: at most %d bytes", field, max)
	}
	if !utf8.ValidString(v) {
		return invalid("%s: not valid UTF-8", field)
	}
	if i := strings.IndexFunc(v, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }); i >= 0 {
		return invalid("%s: control characters (CR, LF, ...) are not allowed", field)
	}
	return nil
}

// parseAddress takes "user@example.com" or "Name <user@example.com>"; the
// address itself must be one SMTP can carry (ASCII: SMTPUTF8 is not
// offered).
func parseAddress(field, s string) (*mail.Address, *apiError) {
	if s == "" {
		return nil, invalid("%s: required", field)
	}
	if e := oneLine(field, s, maxAddressLength); e != nil {
		return nil, e
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, invalid("%s: %q is not an address such as user@example.com or \"Name <user@example.com>\"", field, smtpd.PrintableAddress(s))
	}
	if _, ok := smtpd.ParseMailbox(a.Address); !ok {
		return nil, invalid("%s: %q is not an address SMTP can carry (ASCII local part and domain)", field, smtpd.PrintableAddress(a.Address))
	}
	return a, nil
}

func parseAddresses(field string, in []string) ([]*mail.Address, *apiError) {
	out := make([]*mail.Address, 0, len(in))
	for i, s := range in {
		a, e := parseAddress(fmt.Sprintf("%s[%d]", field, i), s)
		if e != nil {
			return nil, e
		}
		out = append(out, a)
	}
	return out, nil
}

// checkHeaders refuses reserved names and anything that could end a
// header early.
func checkHeaders(in map[string]string) ([][2]string, *apiError) {
	if len(in) > maxHeaderFields {
		return nil, invalid("headers: at most %d", maxHeaderFields)
	}
	out := make([][2]string, 0, len(in))
	for name, v := range in {
		if len(name) > maxHeaderName || !headerNamePattern.MatchString(name) {
			return nil, invalid("headers: %q is not a header name (printable ASCII without ':' or spaces, at most %d bytes)", smtpd.PrintableAddress(name), maxHeaderName)
		}
		if reservedHeader(name) {
			return nil, invalid("headers: %s is set by the API from the request's fields or by the relay; remove it", name)
		}
		if e := oneLine("headers."+name, v, maxLineValue); e != nil {
			return nil, e
		}
		out = append(out, [2]string{name, v})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out, nil
}

func reservedHeader(name string) bool {
	lower := strings.ToLower(name)
	if slices.Contains(reservedHeaders, lower) {
		return true
	}
	return slices.ContainsFunc(reservedHeaderPrefixes, func(p string) bool { return strings.HasPrefix(lower, p) })
}

func checkAttachments(in []Attachment) ([]Attachment, *apiError) {
	if len(in) > maxAttachments {
		return nil, invalid("attachments: at most %d", maxAttachments)
	}
	out := slices.Clone(in)
	cids := map[string]bool{}
	for i := range out {
		if e := checkAttachment(i, &out[i], cids); e != nil {
			return nil, e
		}
	}
	return out, nil
}

func checkAttachment(i int, a *Attachment, cids map[string]bool) *apiError {
	field := fmt.Sprintf("attachments[%d]", i)
	if a.Filename == "" {
		return invalid("%s.filename: required", field)
	}
	if e := oneLine(field+".filename", a.Filename, maxFilename); e != nil {
		return e
	}
	if a.ContentType == "" {
		a.ContentType = "application/octet-stream"
	}
	mediaType, _, err := mime.ParseMediaType(a.ContentType)
	if err != nil || strings.HasPrefix(mediaType, "multipart/") || strings.HasPrefix(mediaType, "message/") {
		return invalid("%s.contentType: want a single-part media type such as image/png", field)
	}
	a.ContentType = mediaType // parameters (a charset, a boundary) are the API's to write
	if a.ContentID != "" {
		if !contentIDPattern.MatchString(a.ContentID) || cids[a.ContentID] {
			return invalid("%s.contentId: want a unique id of letters, digits and ._@+- (as in cid:logo@example)", field)
		}
		cids[a.ContentID] = true
	}
	if a.decoded == nil {
		b, err := base64.StdEncoding.DecodeString(a.Content)
		if err != nil {
			return invalid("%s.content: not standard padded base64", field)
		}
		a.decoded, a.Content = b, ""
	}
	return nil
}

// checkCustomArgs applies the rules X-SMTPAPI's customArgs follow too.
func checkCustomArgs(in map[string]string) (map[string]string, *apiError) {
	if err := submission.CheckCustomArgs(in); err != nil {
		return nil, invalid("%s", err.Error())
	}
	return in, nil
}
