{{- define "tcpwatch.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcpwatch.labels" -}}
app.kubernetes.io/name: tcpwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tcpwatch.selector" -}}
app.kubernetes.io/name: tcpwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A TOML value: strings quoted, lists as arrays, the rest as is. */}}
{{- define "tcpwatch.toml" -}}
{{- if kindIs "string" . -}}
{{ . | quote }}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ $e | quote }}{{ end }}]
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}

{{/* "true" when the configured source uses the tracepoint program, else empty. */}}
{{- define "tcpwatch.tracepoint" -}}
{{- if contains "tracepoint" (toString .Values.config.source) -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when fleet mode is on (fleet.urls not empty), else empty. A URL
     carrying a password is refused: it would be in the pod spec and in the
     agent's command line, readable by anyone who can list pods or
     processes on the node. */}}
{{- define "tcpwatch.fleet" -}}
{{- range .Values.fleet.urls -}}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@" . -}}
{{- fail "fleet.urls: a URL holds a password; put it in a Secret and name it in fleet.passwordSecret" -}}
{{- end -}}
{{- end -}}
{{- if .Values.fleet.urls -}}
true
{{- end -}}
{{- end -}}
