package smtpd

import (
	"strconv"
	"strings"
)

// maxPathLength is RFC 5321's limit on a path, angle brackets included.
const maxPathLength = 256

// parsePath parses `<address> [PARAM[=value] ...]` after FROM: or TO:. It is
// lenient where clients commonly are (a space after the colon, an address
// without angle brackets) and strict about what is stored: no spaces, control
// characters or brackets inside the address.
func parsePath(arg string) (addr string, params []string, ok bool) {
	arg = strings.TrimLeft(arg, " ")
	var rest string
	if strings.HasPrefix(arg, "<") {
		end := strings.IndexByte(arg, '>')
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
	// A source route (<@a,@b:user@c>) is obsolete; keep the mailbox.
	if strings.HasPrefix(addr, "@") {
		_, mailbox, found := strings.Cut(addr, ":")
		if !found {
			return "", nil, false
		}
		addr = mailbox
	}
	if !validAddress(addr) {
		return "", nil, false
	}
	return addr, strings.Fields(rest), true
}

// validAddress accepts "" (the null path; callers decide where it is allowed)
// or local@domain made of printable characters without spaces or brackets.
func validAddress(addr string) bool {
	if addr == "" {
		return true
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return false
	}
	for i := 0; i < len(addr); i++ {
		c := addr[i]
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' {
			// UTF-8 (SMTPUTF8) is not advertised, so 8-bit bytes are refused too.
			return false
		}
		if c >= 0x80 {
			return false
		}
	}
	return true
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
