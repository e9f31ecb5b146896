package wire

import (
	"strings"
	"testing"
)

// What the publisher leaves out of a shard, one account at a time.
func TestCheckAccount(t *testing.T) {
	good := Account{APIUser: "shop", KeyDigests: []string{Digest("0123456789abcdef0123456789abcdef")}, AllowedSenderDomains: []string{"shop.example"}}
	if err := CheckAccount(good); err != nil {
		t.Fatalf("valid account: %v", err)
	}
	bad := good
	bad.AllowedSenderDomains = []string{strings.Repeat("a", 64) + ".example"}
	if err := CheckAccount(bad); err == nil || !strings.Contains(err.Error(), "allowedSenderDomains[0]") {
		t.Fatalf("label over 63 characters: %v", err)
	}
}

// TestCheckWebhooks: each problem of a webhook is named, and the secret is
// never quoted back.
func TestCheckWebhooks(t *testing.T) {
	good := Account{APIUser: "shop", KeyDigests: []string{Digest("0123456789abcdef0123456789abcdef")},
		Webhooks: []Webhook{{URL: "https://hooks.shop.example/events", Events: []string{"delivered", "bounced"}, Secret: "whsec-0123456789abcdef"}}}
	if err := CheckAccount(good); err != nil {
		t.Fatalf("valid webhook: %v", err)
	}
	cases := map[string]struct {
		hook Webhook
		want string
	}{
		"ftp":           {Webhook{URL: "ftp://x.example/", Secret: "whsec-0123456789abcdef"}, "want https://"},
		"relative":      {Webhook{URL: "/events", Secret: "whsec-0123456789abcdef"}, "want https://"},
		"user info":     {Webhook{URL: "https://u:p@x.example/", Secret: "whsec-0123456789abcdef"}, "no user information"},
		"long":          {Webhook{URL: "https://x.example/" + strings.Repeat("a", MaxWebhookURLLength), Secret: "whsec-0123456789abcdef"}, "longer than"},
		"unknown event": {Webhook{URL: "https://x.example/", Events: []string{"opened"}, Secret: "whsec-0123456789abcdef"}, `events[0] "opened": want one of`},
		"short secret":  {Webhook{URL: "https://x.example/", Secret: "short-secret"}, "secret: want 16 to 256"},
		"no host":       {Webhook{URL: "https:///events", Secret: "whsec-0123456789abcdef"}, "want a host"},
		"port, no host": {Webhook{URL: "https://:443/events", Secret: "whsec-0123456789abcdef"}, "want a host"},
	}
	for name, c := range cases {
		bad := good
		bad.Webhooks = []Webhook{c.hook}
		err := CheckAccount(bad)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if err != nil && c.hook.Secret != "" && strings.Contains(err.Error(), c.hook.Secret) {
			t.Errorf("%s: the error quotes the secret", name)
		}
		// The one webhook alone: what the operator checks before it
		// publishes a webhook, so that a bad one never costs its account
		// its place in the shard.
		if err := CheckWebhook(c.hook); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckWebhook %v, want %q", name, err, c.want)
		}
	}
	if err := CheckWebhook(good.Webhooks[0]); err != nil {
		t.Errorf("CheckWebhook of a valid webhook: %v", err)
	}
	many := good
	for i := range MaxWebhooks + 1 {
		many.Webhooks = append(many.Webhooks, Webhook{URL: "https://x.example/" + string(rune('a'+i)), Secret: "whsec-0123456789abcdef"})
	}
	many.Webhooks = many.Webhooks[1:]
	many.Webhooks = append(many.Webhooks, many.Webhooks[0])
	if err := CheckAccount(many); err == nil || !strings.Contains(err.Error(), "at most 10") || !strings.Contains(err.Error(), "already used") {
		t.Errorf("too many, and a duplicate: %v", err)
	}
}
