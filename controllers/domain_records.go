package controllers

import (
	"context"
	"errors"
	"slices"
	"strings"

	v1 "github.com/mailfleet/mailfleet/api/v1alpha1"
	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/controllers/dnscheck"
)

// Purposes of the records an SmtpDomain's status lists.
const (
	purposeDKIM        = "DKIM"
	purposeDKIMEd25519 = "DKIM-Ed25519"
	purposeSPF         = "SPF"
	purposeDMARC       = "DMARC"
)

// dmarcSuggestion is a first DMARC record: reports nothing, rejects
// nothing, and aligns relaxed, which the relays' signatures (d= the
// domain, From in it or a subdomain) satisfy.
const dmarcSuggestion = "v=DMARC1; p=none; adkim=r; aspf=r"

// lookups asks DNS for every record a domain's status lists.
type lookups struct {
	dns dnscheck.Resolver
	// found is each DKIM selector's record state; spf and dmarc theirs.
	found      map[string]string
	spf, dmarc string
	// failed is the first lookup that had no answer, for the message.
	failed error
}

func (l *lookups) run(ctx context.Context, keys *domainKeys, spfInclude string) {
	l.found = map[string]string{}
	for _, key := range keys.Keys {
		values, err := l.lookup(ctx, wire.DKIMRecordName(key.Selector, keys.Domain))
		l.found[key.Selector] = dkimState(values, err, key.Record)
	}
	values, err := l.lookup(ctx, keys.Domain)
	l.spf = spfState(values, err, spfInclude)
	values, err = l.lookup(ctx, "_dmarc."+keys.Domain)
	l.dmarc = prefixState(values, err, "v=DMARC1")
}

func (l *lookups) lookup(ctx context.Context, name string) ([]string, error) {
	values, err := l.dns.LookupTXT(ctx, name)
	if err != nil && !errors.Is(err, dnscheck.ErrNotFound) && l.failed == nil {
		l.failed = err
	}
	return values, err
}

// dkimState compares the records found with want: the same key (p=) and
// key type (k=, rsa when absent) is Found; a DKIM record with another key
// is Mismatch.
func dkimState(values []string, err error, want string) string {
	if state, done := lookupState(err); done {
		return state
	}
	wantKey, _ := wire.DKIMRecordTag(want, "p")
	wantType, _ := wire.DKIMRecordTag(want, "k")
	for _, v := range values {
		key, ok := wire.DKIMRecordTag(v, "p")
		keyType, typed := wire.DKIMRecordTag(v, "k")
		if !typed {
			keyType = "rsa"
		}
		if ok && key == wantKey && keyType == wantType {
			return v1.DNSRecordFound
		}
	}
	for _, v := range values {
		if _, ok := wire.DKIMRecordTag(v, "p"); ok {
			return v1.DNSRecordMismatch
		}
	}
	return v1.DNSRecordMissing
}

// spfState: an SPF record that includes spfInclude is Found; one without
// it is Mismatch (it may still allow the relays some other way).
func spfState(values []string, err error, spfInclude string) string {
	if state, done := lookupState(err); done {
		return state
	}
	for _, v := range values {
		if !strings.HasPrefix(strings.ToLower(v), "v=spf1") {
			continue
		}
		if slices.Contains(strings.Fields(strings.ToLower(v)), "include:"+strings.ToLower(spfInclude)) {
			return v1.DNSRecordFound
		}
		return v1.DNSRecordMismatch
	}
	return v1.DNSRecordMissing
}

func prefixState(values []string, err error, prefix string) string {
	if state, done := lookupState(err); done {
		return state
	}
	for _, v := range values {
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(v)), strings.ToUpper(prefix)) {
			return v1.DNSRecordFound
		}
	}
	return v1.DNSRecordMissing
}

func lookupState(err error) (string, bool) {
	switch {
	case errors.Is(err, dnscheck.ErrNotFound):
		return v1.DNSRecordMissing, true
	case err != nil:
		return v1.DNSRecordUnknown, true
	}
	return "", false
}

// domainRecords is the records the status lists: each key's, the SPF
// suggestion (when the operator knows what the relays' SPF record is)
// and the DMARC suggestion.
func domainRecords(keys *domainKeys, l *lookups, spfInclude string) []v1.DNSRecord {
	var out []v1.DNSRecord
	for _, key := range keys.Keys {
		purpose := purposeDKIM
		if key.Algorithm == algEd25519 {
			purpose = purposeDKIMEd25519
		}
		out = append(out, v1.DNSRecord{
			Purpose: purpose, Name: wire.DKIMRecordName(key.Selector, keys.Domain), Type: "TXT", Value: key.Record,
			Required: key.State != v1.DKIMKeyRetiring, State: stateOr(l.found[key.Selector]),
		})
	}
	if spfInclude != "" {
		out = append(out, v1.DNSRecord{Purpose: purposeSPF, Name: keys.Domain, Type: "TXT",
			Value: "v=spf1 include:" + spfInclude + " ~all", State: stateOr(l.spf)})
	}
	return append(out, v1.DNSRecord{Purpose: purposeDMARC, Name: "_dmarc." + keys.Domain, Type: "TXT",
		Value: dmarcSuggestion, State: stateOr(l.dmarc)})
}

func stateOr(s string) string {
	if s == "" {
		return v1.DNSRecordUnknown
	}
	return s
}
