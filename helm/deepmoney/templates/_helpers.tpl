{{/* The chart name, cut to the 63 characters of a DNS label. */}}
{{- define "deepmoney.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: RELEASE-deepmoney, or the release name alone when it already holds the chart's. */}}
{{- define "deepmoney.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "deepmoney.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object carries. */}}
{{- define "deepmoney.labels" -}}
helm.sh/chart: {{ include "deepmoney.chart" . }}
{{ include "deepmoney.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: deepmoney
{{- end }}

{{/* The labels a selector matches (never change between upgrades). */}}
{{- define "deepmoney.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deepmoney.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The MLflow server's name and labels. */}}
{{- define "deepmoney.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "deepmoney.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "deepmoney.mlflow.selectorLabels" -}}
{{ include "deepmoney.selectorLabels" . }}
app.kubernetes.io/component: mlflow
{{- end }}

{{/* The pipeline runs' ServiceAccount. */}}
{{- define "deepmoney.pipeline.serviceAccountName" -}}
{{- if .Values.pipeline.serviceAccount.create }}
{{- default (printf "%s-pipeline" (include "deepmoney.fullname" .)) .Values.pipeline.serviceAccount.name | trunc 63 }}
{{- else }}
{{- required "pipeline.serviceAccount.name is required when pipeline.serviceAccount.create is false" .Values.pipeline.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion (never latest). */}}
{{- define "deepmoney.image" -}}
{{- $tag := default .Chart.AppVersion .image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image tag 'latest' is refused: pin a version" }}
{{- end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* The hardened container securityContext. */}}
{{- define "deepmoney.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The hardened pod securityContext (uid/gid of the image's user). */}}
{{- define "deepmoney.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
