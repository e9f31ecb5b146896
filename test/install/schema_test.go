package install

import (
	"strings"
	"testing"
)

// TestValuesSchemaRefuses: values.schema.json refuses wrong values before
// anything renders, with a message naming the value and what it must be,
// for `helm install`, `helm template` and `helm lint` alike (and the
// templates refuse combinations the schema cannot see).
func TestValuesSchemaRefuses(t *testing.T) {
	cases := []struct {
		name string
		set  string
		want []string // all in helm's message
		// templateOnly: refused by a template's fail, which helm lint
		// reports as an INFO only; install and template refuse it.
		templateOnly bool
	}{
		{"negative replica count", "replicaCount=-1", []string{"replicaCount", "minimum"}, false},
		{"replica count not a number", "replicaCount=many", []string{"replicaCount", "integer"}, false},
		{"unknown log level", "logLevel=verbose", []string{"logLevel", "debug", "info", "warn", "error"}, false},
		{"image repository with upper case and a space", "image.repository=Ghcr.io/Mail Fleet", []string{"image/repository", "does not match pattern"}, false},
		{"tag in the repository", "image.repository=ghcr.io/mailfleet/mailfleet:v1", []string{"image/repository", "does not match pattern"}, false},
		{"malformed tag", "image.tag=-v1", []string{"image/tag", "does not match pattern"}, false},
		{"malformed digest", "image.digest=sha256:abc", []string{"image/digest", "does not match pattern"}, false},
		{"malformed relay image", "relayImage=ghcr.io/mailfleet/mailfleet@md5:00", []string{"relayImage", "does not match pattern"}, false},
		{"malformed redis image", "redis.image.repository=redis:7", []string{"redis/image/repository", "does not match pattern"}, false},
		{"misspelt key", "replicas=2", []string{"replicas", "additional properties"}, false},
		{"port out of range", "metrics.port=70000", []string{"metrics/port", "maximum"}, false},
		// Not the schema's: the templates refuse what needs two values together.
		{"replicas without leader election", "replicaCount=2,leaderElection.enabled=false", []string{"replicaCount > 1 needs leaderElection.enabled"}, true},
		{"a metrics certificate for plain HTTP", "metrics.secure=false,metrics.tls.secretName=tls", []string{"metrics.tls.secretName needs metrics.secure"}, true},
		{"copies of a Secret the chart does not generate", "nats.enabled=true,nats.auth.existingSecret=mine,nats.auth.copyToNamespaces={mail}", []string{"nats.auth.copyToNamespaces copies the Secret the chart generates"}, true},
		{"copies without authentication", "redis.enabled=true,redis.auth.copyToNamespaces={mail}", []string{"redis.auth.copyToNamespaces"}, true},
		{"a namespace that is not a DNS label", "redis.auth.copyToNamespaces={Mail_NS}", []string{"redis/auth/copyToNamespaces", "does not match pattern"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			verbs := [][]string{{"template", "mailfleet", chartDir}}
			if !tc.templateOnly {
				verbs = append(verbs, []string{"lint", "--strict", chartDir})
			}
			for _, verb := range verbs {
				out, err := helm(append(verb, "--set", tc.set)...)
				if err == nil {
					t.Fatalf("helm %s --set %s succeeded, want it refused:\n%.400s", verb[0], tc.set, out)
				}
				msg := err.Error() + string(out)
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("helm %s --set %s: message lacks %q:\n%s", verb[0], tc.set, w, msg)
					}
				}
			}
		})
	}
}
