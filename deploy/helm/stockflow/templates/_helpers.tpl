{{/*
The name of every object: the release name, with the chart name appended unless the release
name already contains it (release "stockflow" gives "stockflow", release "shop" gives
"shop-stockflow"). Pods are then <fullname>-0, <fullname>-1, ...
*/}}
{{- define "stockflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels that select this release's processor pods; a StatefulSet's selector cannot change. */}}
{{- define "stockflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: processor
{{- end -}}

{{- define "stockflow.labels" -}}
{{ include "stockflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Secret holding DATABASE_URL: the user's, or the one this chart makes. */}}
{{- define "stockflow.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "stockflow.fullname" .)) -}}
{{- end -}}
