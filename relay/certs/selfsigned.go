package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names written by WriteSelfSigned; tls.crt and tls.key match the keys of
// a Kubernetes TLS Secret so dev mode and a cluster mount look the same.
const (
	CAFileName   = "ca.crt"
	CertFileName = "tls.crt"
	KeyFileName  = "tls.key"
)

const (
	// caValidity outlives any leaf a dev setup asks for, so only the leaf
	// decides when EnsureSelfSigned regenerates.
	caValidity = 10 * 365 * 24 * time.Hour
	// selfSignedValidity is the leaf lifetime EnsureSelfSigned asks for.
	selfSignedValidity = 365 * 24 * time.Hour
	// reuseMargin is how long an existing certificate must stay valid for
	// EnsureSelfSigned to keep it, so a dev relay started today does not
	// begin failing handshakes tonight.
	reuseMargin = 24 * time.Hour
	// backdate tolerates clients whose clock is a little behind ours.
	backdate = time.Hour
)

var errNoHosts = errors.New("no hosts given")

// Files names the PEM files of a certificate authority and a server
// certificate and key it issued.
type Files struct {
	CertFile, KeyFile, CAFile string
}

// filesIn returns the names WriteSelfSigned uses inside dir.
func filesIn(dir string) Files {
	return Files{
		CertFile: filepath.Join(dir, CertFileName),
		KeyFile:  filepath.Join(dir, KeyFileName),
		CAFile:   filepath.Join(dir, CAFileName),
	}
}

// CA is a certificate authority held in memory, for dev mode and for tests
// that need to issue several server certificates (to simulate rotation).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// GenerateCA creates a CA with a new ECDSA P-256 key, valid for ten years
// and allowed to sign only leaf certificates.
func GenerateCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := newTemplate(commonName, caValidity)
	if err != nil {
		return nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	tmpl.IsCA = true
	tmpl.MaxPathLenZero = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %q: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodePEM("CERTIFICATE", der)}, nil
}

// Issue creates a server certificate for hosts, valid from now for validFor,
// with a new ECDSA P-256 key. Hosts that parse as IP addresses become IP
// SANs, the rest DNS SANs; the first host is also the subject CN, for people
// reading logs. The key is returned as PKCS #8 PEM.
func (ca *CA) Issue(hosts []string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("issue certificate: %w", errNoHosts)
	}
	if validFor <= 0 {
		return nil, nil, fmt.Errorf("issue certificate for %v: validity %v is not positive", hosts, validFor)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key for %v: %w", hosts, err)
	}
	tmpl, err := leafTemplate(hosts, validFor)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %v: %w", hosts, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key for %v: %w", hosts, err)
	}
	return encodePEM("CERTIFICATE", der), encodePEM("PRIVATE KEY", keyDER), nil
}

func leafTemplate(hosts []string, validFor time.Duration) (*x509.Certificate, error) {
	tmpl, err := newTemplate(hosts[0], validFor)
	if err != nil {
		return nil, err
	}
	// ECDSA keys only sign, so no KeyEncipherment.
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl, nil
}

// newTemplate is what the CA and its leaves share: a fresh serial, the
// subject, and a validity from a little before now until validFor from now.
func newTemplate(commonName string, validFor time.Duration) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validFor),
		BasicConstraintsValid: true,
	}, nil
}

// randomSerial returns a positive 128-bit serial; RFC 5280 asks for at most
// 20 octets and CA/Browser Forum rules for at least 64 bits of randomness.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate certificate serial: %w", err)
	}
	// Zero is not a valid serial.
	return n.Add(n, big.NewInt(1)), nil
}

func encodePEM(blockType string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
}

// WriteSelfSigned creates a new CA and a server certificate it issued for
// hosts, and writes them into dir (created if missing) as ca.crt, tls.crt and
// tls.key, the key readable by the owner only. The CA key is not kept: the
// files are for one dev setup, and a regeneration makes a new CA.
func WriteSelfSigned(dir string, hosts []string, validFor time.Duration) (Files, error) {
	ca, err := GenerateCA("mailfleet self-signed CA")
	if err != nil {
		return Files{}, err
	}
	certPEM, keyPEM, err := ca.Issue(hosts, validFor)
	if err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("create certificate directory: %w", err)
	}
	f := filesIn(dir)
	// Key before certificate: a Reloader watching dir sees a mismatched pair
	// in between either way, and keeps the old one until both are in place.
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{f.CAFile, ca.CertPEM, 0o644},
		{f.KeyFile, keyPEM, 0o600},
		{f.CertFile, certPEM, 0o644},
	} {
		if err := replaceFile(w.path, w.data, w.perm); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// replaceFile writes data to a temporary file and renames it over path, so a
// reader never sees a half-written file.
func replaceFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// EnsureSelfSigned returns the self-signed files in dir, reusing them when
// they parse, chain to ca.crt, stay valid for at least another 24 hours and
// name every one of hosts; otherwise it writes new ones valid for a year.
func EnsureSelfSigned(dir string, hosts []string) (Files, error) {
	f := filesIn(dir)
	if reusable(f, hosts, time.Now()) == nil {
		return f, nil
	}
	return WriteSelfSigned(dir, hosts, selfSignedValidity)
}

// reusable says why the files in f cannot serve hosts from now on for at
// least reuseMargin, or nil if they can.
func reusable(f Files, hosts []string, now time.Time) error {
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", f.CAFile)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now.Add(reuseMargin),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if !names(leaf, h) {
			return fmt.Errorf("certificate does not name %s", h)
		}
	}
	return nil
}

// names reports whether host is literally one of leaf's SANs. It compares
// names rather than calling VerifyHostname so that a wildcard asked for is
// only satisfied by that wildcard.
func names(leaf *x509.Certificate, host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return slices.ContainsFunc(leaf.IPAddresses, ip.Equal)
	}
	return slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, host) })
}
