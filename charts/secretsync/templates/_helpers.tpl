{{/* Names and labels of the secretsync chart. */}}
{{- define "secretsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secretsync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "secretsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secretsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "secretsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "secretsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: secretsync
{{- end -}}

{{- define "secretsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "secretsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "secretsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The rules secretsync needs where it delivers: only the kinds it writes, only its verbs
     (server-side apply = patch, plus create for new objects). */}}
{{- define "secretsync.deliveryRules" -}}
{{- $verbs := list "get" "list" "create" "patch" "delete" -}}
{{- with .Values.rbac.kinds }}
{{- if .secrets }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: {{ toJson $verbs }}
{{- end }}
{{- if .sealedSecrets }}
- apiGroups: ["bitnami.com"]
  resources: ["sealedsecrets"]
  verbs: {{ toJson $verbs }}
{{- end }}
{{- if .externalSecrets }}
- apiGroups: ["external-secrets.io"]
  resources: ["externalsecrets"]
  verbs: {{ toJson $verbs }}
{{- end }}
{{- end }}
{{- if .Values.rbac.rolloutRestart }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["patch"]
{{- end }}
{{- end -}}

{{- define "secretsync.fleetPath" -}}
{{- if .Values.fleet.subPath -}}
{{- printf "/git/fleet/%s" (trimPrefix "/" .Values.fleet.subPath) -}}
{{- else -}}
/git/fleet
{{- end -}}
{{- end -}}
