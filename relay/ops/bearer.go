package ops

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
)

// requireBearer answers 401 to a request without the token in file. The
// file is read at each request, so a rotated Secret takes effect at the
// next scrape; a scrape every few seconds makes that a small cost.
func requireBearer(file string, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want, err := readToken(file)
		if err != nil {
			log.Error("metrics bearer token unreadable; refusing scrapes", "err", err)
		}
		if err != nil || !tokenMatches(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readToken reads the token, without the line end a file often has. The
// error names the file, never its content.
func readToken(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("metrics bearer token file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, errors.New("metrics bearer token file " + file + " is empty")
	}
	return b, nil
}

// tokenMatches compares in constant time. Both sides are hashed first:
// subtle.ConstantTimeCompare returns at once on different lengths, which
// would tell a guesser the token's length.
func tokenMatches(header string, want []byte) bool {
	// RFC 7235: the scheme is case-insensitive.
	const scheme = "bearer "
	if len(header) < len(scheme) || !strings.EqualFold(header[:len(scheme)], scheme) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(header[len(scheme):])))
	exp := sha256.Sum256(want)
	return subtle.ConstantTimeCompare(got[:], exp[:]) == 1
}
