{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "image-preheat.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "image-preheat.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "image-preheat.namespace" -}}
{{- default .Release.Namespace .Values.namespace }}
{{- end }}

{{- define "image-preheat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-preheat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Headless Service used for peer discovery (PEERS_DNS). */}}
{{- define "image-preheat.peersService" -}}
{{- printf "%s-peers" (include "image-preheat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-preheat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-preheat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "image-preheat.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "image-preheat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
