package smtpd

import (
	"net/netip"
	"strconv"
	"strings"
)

// maxPathLength is RFC 5321's limit on a path, angle brackets included.
const maxPathLength = 256

// RFC 5321 §4.5.3.1 limits.
const (
	maxLocalPart = 64
	maxDomain    = 255
)

// parsePath parses `<mailbox> [PARAM[=value] ...]` after FROM: or TO:. It
// is lenient where clients commonly are (a space after the colon, a mailbox
// without angle brackets) and strict about the mailbox itself: exactly RFC
// 5321's Mailbox grammar (see parseMailbox), nothing more. A source route
// (<@a,@b:user@c>) is refused, not stripped: it has been obsolete since
// 2001, and a relay that rewrote paths would check one address and send to
// another.
func parsePath(arg string) (addr string, params []string, ok bool) {
	arg = strings.TrimLeft(arg, " ")
	var rest string
	if strings.HasPrefix(arg, "<") {
		end := pathEnd(arg)
		if end < 0 || end+1 > maxPathLength {
			return "", nil, false
		}
		addr, rest = arg[1:end], arg[end+1:]
		if rest != "" && rest[0] != ' ' {
			return "", nil, false
		}
	} else {
		addr, rest, _ = strings.Cut(arg, " ")
		if addr == "" || len(addr) > maxPathLength-2 {
			return "", nil, false
		}
	}
	if addr != "" {
		if _, ok := ParseMailbox(addr); !ok {
			return "", nil, false
		}
	}
	return addr, strings.Fields(rest), true
}

// pathEnd is the index of the '>' that closes the path opened at arg[0],
// skipping a quoted local part, or -1.
func pathEnd(arg string) int {
	quoted := false
	for i := 1; i < len(arg); i++ {
		switch c := arg[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '>':
			return i
		}
	}
	return -1
}

// Mailbox is a parsed RFC 5321 Mailbox. Domain is a domain name, or an
// address literal with its brackets ("[192.0.2.1]", "[IPv6:2001:db8::1]").
type Mailbox struct {
	Local, Domain string
}

func (m Mailbox) literal() bool { return strings.HasPrefix(m.Domain, "[") }

// ParseMailbox parses Mailbox = Local-part "@" ( Domain / address-literal ),
// where Local-part is a Dot-string or a Quoted-string. Everything else is
// refused: commas, spaces and '@' outside quotes, empty labels, 8-bit bytes
// (SMTPUTF8 is not offered), general address literals, and parts over RFC
// 5321's lengths. The domain is what follows the last '@', which the grammar
// guarantees is the separator: a Domain never contains one.
//
// A policy that decides on an address's domain must take it from here,
// never from a second, more lenient reading of the address.
func ParseMailbox(s string) (Mailbox, bool) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return Mailbox{}, false
	}
	m := Mailbox{Local: s[:at], Domain: s[at+1:]}
	if len(m.Local) > maxLocalPart || !validLocalPart(m.Local) {
		return Mailbox{}, false
	}
	if m.literal() {
		return m, validAddressLiteral(m.Domain)
	}
	return m, len(m.Domain) <= maxDomain && validDomain(m.Domain)
}

// PrintableAddress is an address fit to echo in a reply or a log, whatever
// the client sent: printable ASCII, at most a path's length.
func PrintableAddress(s string) string { return printableToken(s, maxPathLength) }

// printableToken replaces every byte outside printable ASCII (control
// characters, DEL, 8-bit) with '?' and cuts s to at most n bytes.
func printableToken(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	b := []byte(s)
	for i, c := range b {
		if c <= ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

func validLocalPart(s string) bool {
	if strings.HasPrefix(s, `"`) {
		return validQuotedString(s)
	}
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			if !isAtext(atom[i]) {
				return false
			}
		}
	}
	return true
}

// isAtext is RFC 5322's atext: letters, digits and !#$%&'*+-/=?^_`{|}~.
func isAtext(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validQuotedString: DQUOTE *(qtextSMTP / "\" %d32-126) DQUOTE, where
// qtextSMTP is %d32-33 / %d35-91 / %d93-126.
func validQuotedString(s string) bool {
	if len(s) < 2 || s[len(s)-1] != '"' {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
			if i >= len(s)-1 || s[i] < 32 || s[i] > 126 {
				return false
			}
		case c == '"' || c < 32 || c > 126:
			return false
		}
	}
	return true
}

// validDomain: sub-domain *("." sub-domain), each a letter or digit, then
// letters, digits and hyphens, ending in a letter or digit.
func validDomain(s string) bool {
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validAddressLiteral: "[" IPv4 "]" or "[IPv6:" IPv6 "]" (RFC 5321 §4.1.3).
func validAddressLiteral(s string) bool {
	inner, ok := strings.CutSuffix(strings.TrimPrefix(s, "["), "]")
	if !ok {
		return false
	}
	if v6, ok := cutPrefixFold(inner, "IPv6:"); ok {
		addr, err := netip.ParseAddr(v6)
		return err == nil && addr.Is6() && addr.Zone() == ""
	}
	addr, err := netip.ParseAddr(inner)
	return err == nil && addr.Is4()
}

// mailParams are the MAIL FROM parameters the relay understands.
type mailParams struct {
	size int64 // declared SIZE, 0 when absent
}

// parseMailParams reads SIZE, BODY and AUTH (RFC 1870, 6152, 4954). It
// returns the first parameter it cannot accept.
func parseMailParams(params []string) (mailParams, string, bool) {
	var p mailParams
	for _, param := range params {
		key, value, _ := strings.Cut(param, "=")
		switch strings.ToUpper(key) {
		case "SIZE":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return p, param, false
			}
			p.size = n
		case "BODY":
			if v := strings.ToUpper(value); v != "7BIT" && v != "8BITMIME" {
				return p, param, false
			}
		case "AUTH":
			// RFC 4954 §5: accepted and not trusted; the session's own login counts.
		default:
			return p, param, false
		}
	}
	return p, "", true
}
