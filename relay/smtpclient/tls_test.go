package smtpclient

import "testing"

func TestParseTLSMode(t *testing.T) {
	for s, want := range map[string]TLSMode{"": TLSOpportunistic, "Required": TLSRequired, "implicit": TLSImplicit, "none": TLSNone} {
		if got, err := ParseTLSMode(s); err != nil || got != want {
			t.Errorf("ParseTLSMode(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseTLSMode("maybe"); err == nil {
		t.Error("ParseTLSMode accepted maybe")
	}
}
