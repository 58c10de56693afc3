from twisted.application.service import ServiceMaker

grades = ServiceMaker("Grades server", "grades.tap", "The course's grades database query protocol", "grades")
