{{/*
Names. fullname is the release name when it already contains the chart's
name ("mailfleet" -> mailfleet-operator), else <release>-mailfleet.
*/}}
{{- define "mailfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailfleet.operatorName" -}}
{{- printf "%s-operator" (include "mailfleet.fullname" .) -}}
{{- end -}}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailfleet.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object; selectorLabels are the immutable subset. */}}
{{- define "mailfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: mailfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mailfleet.operatorLabels" -}}
{{ include "mailfleet.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mailfleet.operatorSelectorLabels" -}}
app.kubernetes.io/name: mailfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
image renders repository[:tag][@digest] from an image block; the tag
defaults to the chart's appVersion. Call with (list $image $.Chart.AppVersion).
*/}}
{{- define "mailfleet.imageRef" -}}
{{- $img := index . 0 -}}
{{- $tag := default (index . 1) $img.tag -}}
{{- $ref := printf "%s:%s" $img.repository $tag -}}
{{- if $img.digest -}}{{- $ref = printf "%s@%s" $ref $img.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "mailfleet.image" -}}
{{- include "mailfleet.imageRef" (list .Values.image .Chart.AppVersion) -}}
{{- end -}}

{{/*
The restricted Pod Security Standard, for every container the chart runs.
*/}}
{{- define "mailfleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "mailfleet.redisName" -}}
{{- printf "%s-redis" (include "mailfleet.fullname" .) -}}
{{- end -}}

{{- define "mailfleet.natsName" -}}
{{- printf "%s-nats" (include "mailfleet.fullname" .) -}}
{{- end -}}

{{/*
The Secret the basic engines take their credentials from: the user's
existingSecret, else the one the chart generates when auth.enabled, else
empty (no authentication).
*/}}
{{- define "mailfleet.redisAuthSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if .Values.redis.auth.enabled -}}
{{- printf "%s-auth" (include "mailfleet.redisName" .) -}}
{{- end -}}
{{- end -}}

{{- define "mailfleet.natsAuthSecret" -}}
{{- if .Values.nats.auth.existingSecret -}}
{{- .Values.nats.auth.existingSecret -}}
{{- else if .Values.nats.auth.enabled -}}
{{- printf "%s-auth" (include "mailfleet.natsName" .) -}}
{{- end -}}
{{- end -}}

{{/*
The labels the operator puts on every relay pod (controllers/names.go and
relay_render.go: app.kubernetes.io/name=mailfleet-relay, managed-by
mailfleet-operator); the engines' NetworkPolicies admit pods with both.
*/}}
{{- define "mailfleet.relayPodLabels" -}}
app.kubernetes.io/name: mailfleet-relay
app.kubernetes.io/managed-by: mailfleet-operator
{{- end -}}
