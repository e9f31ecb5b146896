package smtpclient

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"
)

// TLSMode says how a session is protected with TLS.
type TLSMode int

const (
	// TLSOpportunistic uses STARTTLS when the server offers it, without
	// verifying the certificate (Postfix's "may"): it defeats passive
	// eavesdropping, and a handshake that fails is retried in plain text.
	TLSOpportunistic TLSMode = iota
	// TLSRequired insists on STARTTLS with a verified certificate; a
	// server that does not offer it, or fails the handshake, fails the
	// session.
	TLSRequired
	// TLSImplicit speaks TLS from the first byte (port 465, RFC 8314),
	// verifying the certificate.
	TLSImplicit
	// TLSNone never uses TLS.
	TLSNone
)

// ParseTLSMode reads a mode as configuration spells it: "opportunistic"
// (also ""), "required", "implicit" or "none".
func ParseTLSMode(s string) (TLSMode, error) {
	switch strings.ToLower(s) {
	case "", "opportunistic":
		return TLSOpportunistic, nil
	case "required":
		return TLSRequired, nil
	case "implicit":
		return TLSImplicit, nil
	case "none":
		return TLSNone, nil
	}
	return 0, fmt.Errorf("unknown TLS mode %q (want opportunistic, required, implicit or none)", s)
}

func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	case TLSImplicit:
		return "implicit"
	case TLSNone:
		return "none"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// tlsConfig is the client TLS configuration for mode.
func tlsConfig(mode TLSMode, serverName string, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12}
	if mode == TLSOpportunistic {
		// Opportunistic TLS only protects against passive listeners; an
		// unverifiable certificate must not make mail fall back to plain
		// text, which would protect against nothing (RFC 7435).
		cfg.InsecureSkipVerify = true
	}
	return cfg
}
