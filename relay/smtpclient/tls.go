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
	// TLSEncrypt insists on STARTTLS but takes any certificate (Postfix's
	// "encrypt"): many MX hosts' certificates do not name them, and a
	// destination that must not get mail in plain text may still not
	// have one that verifies.
	TLSEncrypt
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
	case "encrypt":
		return TLSEncrypt, nil
	}
	return 0, fmt.Errorf("unknown TLS mode %q (want opportunistic, encrypt, required, implicit or none)", s)
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
	case TLSEncrypt:
		return "encrypt"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// tlsConfig is the client TLS configuration for mode.
func tlsConfig(mode TLSMode, serverName string, roots *x509.CertPool) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12}
	if mode == TLSOpportunistic || mode == TLSEncrypt {
		// Opportunistic TLS only protects against passive listeners; an
		// unverifiable certificate must not make mail fall back to plain
		// text, which would protect against nothing (RFC 7435).
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// TLSState is what protected a session: the TLS version ("" for none) and
// whether the server's certificate verified for the name it was dialled
// by, which opportunistic and encrypt sessions check without requiring.
type TLSState struct {
	Version  string
	Verified bool
}

// verified reports whether the handshake's certificates chain to roots
// (nil: the system's) and name serverName.
func verified(cs tls.ConnectionState, serverName string, roots *x509.CertPool) bool {
	if len(cs.PeerCertificates) == 0 || serverName == "" {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: serverName, Roots: roots, Intermediates: inter})
	return err == nil
}

// versionName spells a TLS version as mail logs and Received fields do
// ("TLSv1.3"), not as crypto/tls does ("TLS 1.3").
func versionName(v uint16) string { return strings.Replace(tls.VersionName(v), "TLS ", "TLSv", 1) }
