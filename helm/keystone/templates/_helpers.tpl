{{/* The chart's name. */}}
{{- define "keystone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources. */}}
{{- define "keystone.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "keystone.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "keystone.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "keystone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keystone.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keystone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "keystone.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keystone
{{- end }}

{{- define "keystone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keystone.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keystone.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The rules no schema can say, checked wherever the chart renders: several replicas need
Redis; a Redis URL holding a password belongs in a Secret.
*/}}
{{- define "keystone.validate" -}}
{{- $redis := or .Values.redis.url .Values.redis.existingSecret }}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not $redis) }}
{{- fail "replicaCount > 1 (or autoscaling) needs Redis, so that every replica sees every revocation: set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and .Values.redis.url (regexMatch "^[a-z]+://[^/@]*:[^/@]*@" .Values.redis.url) }}
{{- fail "redis.url holds a password: put the URL in a Secret and set redis.existingSecret (the chart never renders a secret)" }}
{{- end }}
{{- if and .Values.redis.url (not (regexMatch "^rediss?://" .Values.redis.url)) }}
{{- fail "redis.url must start with redis:// or rediss:// (other forms: redis.existingSecret)" }}
{{- end }}
{{- $config := fromToml .Values.config }}
{{- if $config.Error }}
{{- fail (printf "config is not valid TOML: %s" $config.Error) }}
{{- end }}
{{- range list "database_url" "redis_url" "bootstrap_admin_username" "bootstrap_admin_password" "secrets" }}
{{- if hasKey $config . }}
{{- fail (printf "config sets `%s`: secrets come from Secrets named in database, redis and secrets, never from values" .) }}
{{- end }}
{{- end }}
{{- if eq .Values.tls.clientAuth "required" }}
{{- fail "tls.clientAuth required would refuse the kubelet's probes, which carry no client certificate: use optional (certificates are still checked when sent, and required per client)" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and .Values.tls.clientCaSecret (not (include "keystone.tlsSecret" .)) }}
{{- fail "tls.clientCaSecret needs the server's certificate: tls.existingSecret or tls.certManager.enabled" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds (plus server.drain_delay and server.shutdown_grace)" }}
{{- end }}
{{- end }}

{{/* The issuer (`iss`, discovery): as given, or the in-cluster address of the public Service. */}}
{{- define "keystone.issuer" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "keystone.fullname" .) .Release.Namespace (int .Values.service.httpPort)) .Values.issuer }}
{{- end }}

{{/* The environment every Keystone container gets: where the data is, and the secrets. */}}
{{- define "keystone.databaseEnv" -}}
{{- if .Values.database.urlKey }}
- name: KEYSTONE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- else }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.passwordKey }}
- name: KEYSTONE_DATABASE_URL
  value: {{ printf "postgres://%s:$(DATABASE_PASSWORD)@%s:%d/%s%s" .Values.database.user .Values.database.host (int .Values.database.port) .Values.database.name (ternary (printf "?%s" .Values.database.options) "" (ne .Values.database.options "")) | quote }}
{{- end }}
{{- end }}

{{/*
The Secret holding the server's TLS certificate, if the listeners speak TLS.
*/}}
{{- define "keystone.tlsSecret" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "keystone.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The probes' scheme: HTTPS when the listeners speak TLS.
*/}}
{{- define "keystone.probeScheme" -}}
{{- if include "keystone.tlsSecret" . }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
